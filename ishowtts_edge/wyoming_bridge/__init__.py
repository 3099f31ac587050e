"""ishowtts-edge-wyoming: the daemon's voices as a Wyoming text-to-speech service (docs/home-assistant.md).

A separate process from the GPU daemon, so that the daemon keeps its no-network
sandbox: this one listens on TCP and reaches the daemon only through the daemon's own
ZeroMQ socket, as any local app does.  Named ``wyoming_bridge`` because ``wyoming`` is the
protocol library it is built on.
"""
