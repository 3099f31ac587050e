"""What the server counts (the ``requests`` part of ``status``), and how it logs floods.

The counters and the rate-limited log line serve the same events: a flood of refused
connections or dropped replies is counted in full but written to the journal at most
once every few seconds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..logs import kv

log = logging.getLogger(__package__)


@dataclass
class ServerStats:
    requests: Counter = field(default_factory=Counter)  # by op
    errors: Counter = field(default_factory=Counter)  # by code
    #: Replies that could not be delivered, by why: ``peer_full`` (the peer stopped reading), ``peer_gone``.
    replies_dropped: Counter = field(default_factory=Counter)
    #: Connections open now, the cap, and how many were shut at once because the cap was reached.
    connections: int = 0
    max_connections: int = 0
    connections_refused: int = 0
    #: Synthesis requests cancelled, by how: ``op`` (a cancel request), ``disconnect`` (its client
    #: left while it waited or ran), ``slow_reader`` (a stream's client stopped reading).
    cancelled: Counter = field(default_factory=Counter)
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "replies_dropped": dict(self.replies_dropped),
            "connections": {"open": self.connections, "max": self.max_connections, "refused": self.connections_refused},
            "cancelled": dict(self.cancelled),
            "started_at": self.started_at,
        }


class RateLimitedLog:
    """One line now, then at most one every ``every_s`` with how many were held back: a flood must not flood the journal."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last = -float("inf")
        self._held = 0

    def __call__(self, level: int, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._held += 1
            return
        if self._held:
            fields["similar_since_last"] = self._held
        self._last, self._held = now, 0
        log.log(level, "%s %s", message, kv(**fields))
