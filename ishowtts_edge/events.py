"""ZeroMQ PUB endpoint for events that local apps subscribe to (format: docs/events.md).

Each event is two frames: the topic (ASCII, e.g. ``alert.raised``; subscribers filter
on its prefix) and a UTF-8 JSON envelope ``{"v", "topic", "seq", "time", "data"}``.
PUB never blocks and drops messages for a subscriber that is not keeping up, which is
what an appliance wants: a stuck client must not stall synthesis.

A ZeroMQ socket is not thread-safe, and events come from the synthesis thread, the
telemetry thread and the remediation thread, so every send goes through one lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from .endpoints import EndpointError, claim, ipc_path
from .logs import kv

logger = logging.getLogger(__name__)

EVENTS_VERSION = 1
TOPICS = ("alert.raised", "alert.updated", "alert.cleared", "remediation", "state", "service")


class EventPublisherError(RuntimeError):
    """The endpoint cannot be bound; the message says which and why."""


class EventPublisher:
    """A bound PUB socket.  ``publish`` never raises for transport trouble: it returns False."""

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        sndhwm: int = 1000,
        ipc_mode: int | None = 0o660,
    ) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._seq = 0
        self.dropped = 0
        self._ipc_path: Path | None = None
        self._ipc_inode: int | None = None
        if endpoint.startswith("ipc://"):
            name = endpoint[len("ipc://") :]
            if not name:
                raise EventPublisherError(f"events endpoint {endpoint!r}: empty ipc path")
            self._ipc_path = ipc_path(endpoint)  # None for "@name", Linux's abstract namespace: no file
            try:
                claim(endpoint)
            except EndpointError as exc:
                raise EventPublisherError(f"events endpoint {exc}") from None
        elif not endpoint.startswith("tcp://"):
            raise EventPublisherError(f"events endpoint {endpoint!r}: must start with ipc:// or tcp://")

        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            raise EventPublisherError(f"events endpoint {endpoint}: cannot bind: {exc}") from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        if self._ipc_path is not None:
            try:
                if ipc_mode is not None:
                    os.chmod(self._ipc_path, ipc_mode)
                self._ipc_inode = self._ipc_path.stat().st_ino
            except OSError as exc:
                logger.warning("events socket permissions not set %s", kv(path=self._ipc_path, error=exc))
        logger.info("events published %s", kv(endpoint=self.endpoint))

    def publish(self, topic: str, payload: dict[str, Any]) -> bool:
        """Send ``[topic, json]``.  False when closed or when the send queue is full (dropped).

        A topic that is not a short ASCII word, or a payload that is not a dict, is a
        programming error and raises ValueError/TypeError.
        """
        if not isinstance(topic, str) or not topic or not topic.isascii() or any(c.isspace() for c in topic):
            raise ValueError(f"event topic {topic!r}: must be a non-empty ASCII string without spaces")
        if not isinstance(payload, dict):
            raise TypeError(f"event payload for {topic}: expected a dict, got {type(payload).__name__}")
        with self._lock:
            if self._closed:
                logger.debug("event after close dropped %s", kv(topic=topic))
                return False
            self._seq += 1
            envelope = {
                "v": EVENTS_VERSION,
                "topic": topic,
                "seq": self._seq,
                "time": time.time(),
                "data": _strict_json(payload),
            }
            body = json.dumps(envelope, allow_nan=False, default=str, separators=(",", ":")).encode()
            try:
                self._socket.send_multipart([topic.encode("ascii"), body], flags=zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1
                return False
            except zmq.ZMQError as exc:
                self.dropped += 1
                logger.warning("event not sent %s", kv(topic=topic, error=exc))
                return False
            return True

    def close(self) -> None:
        """Close the socket and remove the ipc file, unless another process has replaced it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._socket.close(linger=0)
            path = self._ipc_path
            if path is not None and self._ipc_inode is not None:
                try:
                    if path.stat().st_ino == self._ipc_inode:
                        path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.warning("events socket not removed %s", kv(path=path, error=exc))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "EventPublisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _strict_json(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null rather than invalid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value
