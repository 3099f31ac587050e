"""``ishowtts-edge-wyoming``: serve the daemon's voices over the Wyoming protocol (docs/home-assistant.md).

Reads the daemon's own configuration file: ``[wyoming]`` for where to listen, and
``[server]``/``[paths]`` for where the daemon's socket is.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time

from ishowtts_edge import __version__
from ishowtts_edge.config import ConfigError, Settings, load_settings
from ishowtts_edge.endpoints import ABSENT, NOT_A_SOCKET, STALE, ipc_path, probe_ipc
from ishowtts_edge.logs import kv, setup_logging
from ishowtts_edge.notify import Notifier
from ishowtts_edge.wyoming_bridge.framing import MAX_HEADER_BYTES
from ishowtts_edge.wyoming_bridge.handler import BridgeConfig, BridgeHandler

log = logging.getLogger("ishowtts_edge.wyoming")

#: A connection idle this long may be closed to admit a new one once max_connections are open.
IDLE_GRACE_S = 1.0


def check_daemon_socket(endpoint: str) -> None:
    """Say at start, not at the first request, when the daemon's socket cannot be used (ZeroMQ retries silently)."""
    path = ipc_path(endpoint)
    if path is None:  # tcp, or an abstract socket: nothing to look at
        return
    try:
        state = probe_ipc(path)
    except PermissionError:
        log.warning("the daemon's socket is not usable by this user: add it to group ishowtts-edge %s",
                    kv(socket=path, uid=os.getuid()))
        return
    except OSError:
        return  # there and busy (a full backlog): requests will get through
    if state == ABSENT:
        log.info("the daemon's socket is not there yet; requests wait for it %s", kv(socket=path))
    elif state == STALE:
        log.info("the daemon's socket is left from a daemon that is not running; requests wait for a new one %s",
                 kv(socket=path))
    elif state == NOT_A_SOCKET:
        log.warning("the daemon's endpoint is not a socket: check server.endpoint %s", kv(socket=path))


async def serve(settings: Settings, notifier: Notifier | None = None) -> None:
    """Listen until SIGTERM or SIGINT, then close the listener and every connection."""
    w = settings.wyoming
    config = BridgeConfig(
        endpoint=settings.endpoint,
        seed=w.seed,
        max_chars=settings.server.max_text_chars,
        timeout_s=w.synthesis_timeout_s,
        default_language=w.default_language,
        max_connections=w.max_connections,
    )
    handlers: dict[asyncio.Task, BridgeHandler] = {}

    def make_room() -> bool:
        """At the cap, end the connection idle the longest (at least IDLE_GRACE_S): idle peers
        (a slowloris, a client that connected and never spoke) must not lock everyone else out."""
        now = time.monotonic()
        idle = [h for h in handlers.values() if h.idle_since is not None and now - h.idle_since >= IDLE_GRACE_S]
        if not idle:
            return False
        oldest = min(idle, key=lambda h: h.idle_since)
        log.info("idle connection closed for a new one %s",
                 kv(peer=oldest.peer, idle_s=round(now - oldest.idle_since, 1), open=config.connections))
        oldest.evict("replaced: idle the longest at max_connections")
        return True

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if config.connections >= config.max_connections and not make_room():
            log.warning("connection refused %s", kv(peer=writer.get_extra_info("peername"), open=config.connections))
            handler = BridgeHandler(reader, writer, config)
            handler.speaker.close()
            await handler._send_error("busy", f"{config.max_connections} connections are already open; retry later")
            writer.close()
            return
        config.connections += 1
        task = asyncio.current_task()
        handler = BridgeHandler(reader, writer, config)
        if task is not None:
            handlers[task] = handler
        try:
            await handler.run()
        except asyncio.CancelledError:
            pass  # stopping: a cancelled connection task would be logged by asyncio's stream callback as an error
        finally:
            config.connections -= 1
            if task is not None:
                handlers.pop(task, None)

    server = await asyncio.start_server(accept, host=w.host, port=w.port, limit=MAX_HEADER_BYTES, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = sorted({f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets})
    port = server.sockets[0].getsockname()[1]
    log.info("listening %s", kv(host=w.host, port=port, daemon=settings.endpoint, version=__version__))
    check_daemon_socket(settings.endpoint)
    if notifier is not None:
        notifier.ready(f"Wyoming on {', '.join(bound)}; daemon {settings.endpoint}")
    async with server:
        await stop.wait()
        log.info("stopping %s", kv(connections=config.connections))
        if notifier is not None:
            notifier.stopping()
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ishowtts-edge-wyoming",
        description="Serve the ishowtts-edge daemon's voices to Home Assistant and other Wyoming clients.",
    )
    parser.add_argument("--version", action="version", version=f"ishowtts-edge-wyoming {__version__}")
    parser.add_argument("--config", "-c", help="TOML config (default: $ISHOWTTS_EDGE_CONFIG or /etc/ishowtts-edge/ishowtts-edge.toml)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"<3>{exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    setup_logging(settings.log.level)
    try:
        asyncio.run(serve(settings, Notifier()))
    except OSError as exc:  # the port is taken, the address does not exist here
        log.error("cannot listen %s", kv(host=settings.wyoming.host, port=settings.wyoming.port, reason=exc.strerror or exc))
        return 1
    if any(t.name.startswith("wyoming-daemon") and t.is_alive() for t in threading.enumerate()):
        # A sentence still in the daemon would hold the exit for up to synthesis_timeout_s;
        # its listener is gone, so nothing waits for it.
        log.info("stopped; not waiting for a sentence still in the daemon")
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
