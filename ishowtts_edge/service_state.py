"""The daemon's service state: where it is in its life, and what keeps it degraded.

States: starting -> loading -> warming -> ready | degraded, and stopping at the end.
``degraded`` still serves when the engine is up (compile failed, helper missing,
telemetry unavailable, an active alert); it refuses synthesis only when no model
could be loaded, and says why.  Every change is logged, published as the ``service``
event (docs/events.md) and shown in systemd's STATUS= line at once.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from .logs import kv

log = logging.getLogger(__name__)

#: The states in which the daemon has not finished starting: ``synthesize`` gets ``not_ready``.
STARTING_STATES = ("starting", "loading", "warming")


def _nothing(*_: Any) -> None:
    pass


class ServiceState:
    """State, reason and degraded causes; ``publish(topic, payload)`` and ``refresh()`` are the
    daemon's event publisher and STATUS= update, looked up at each change (both start later)."""

    def __init__(self, publish: Callable[[str, dict[str, Any]], Any] = _nothing,
                 refresh: Callable[[], None] = _nothing) -> None:
        self.state = "starting"
        self.reason = ""
        #: component -> why it is degraded
        self.degraded: dict[str, str] = {}
        self._publish = publish
        self._refresh = refresh

    @property
    def starting(self) -> bool:
        return self.state in STARTING_STATES

    def set(self, state: str, reason: str = "") -> None:
        changed = state != self.state
        self.state, self.reason = state, reason
        if changed:
            log.info("state %s", kv(state=state, reason=reason))
            # Its own topic: "state" is the monitor's picture (status line, alerts, window).
            self._publish("service", {"state": state, "reason": reason, "degraded": dict(self.degraded)})

    def degrade(self, key: str, reason: str) -> None:
        if self.degraded.get(key) != reason:
            log.warning("degraded %s", kv(component=key, reason=reason))
        self.degraded[key] = reason
        if self.state == "ready":
            self.set("degraded")
            self._refresh()

    def recover(self, key: str) -> None:
        """A passing cause went away (a synthesis succeeded after an OOM): ready again once no cause is left."""
        if self.degraded.pop(key, None) is None:
            return
        log.info("recovered %s", kv(component=key))
        if self.state == "degraded" and not self.degraded:
            self.set("ready")
            self._refresh()

    def finish_starting(self) -> None:
        """The self-test is over: ready, or degraded when a cause is already known."""
        if self.state == "warming":
            self.set("degraded" if self.degraded else "ready")

    def detail(self, progress: str) -> str:
        """The reason for the state, else what start-up is doing now."""
        if self.reason:
            return self.reason
        return progress if self.starting else ""

    def health(self, engine_loaded: bool, progress: str = "") -> dict[str, Any]:
        return {
            "state": self.state,
            "ready": self.state in ("ready", "degraded") and engine_loaded,
            "reasons": dict(self.degraded),
            "detail": self.detail(progress),
        }
