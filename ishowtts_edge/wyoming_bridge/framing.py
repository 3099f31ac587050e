"""Reading Wyoming events with every length bounded before anything is allocated.

wyoming's own ``async_read_event`` reads ``data_length`` and ``payload_length`` from the
peer's header and then ``readexactly``s that many bytes: a header claiming a terabyte
makes the process try to hold it.  This reader refuses such a header (and one that is not
JSON) with a :class:`FramingError`, after which the connection cannot be trusted and is
closed; the header line itself is bounded by the StreamReader's ``limit``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wyoming.event import Event

#: The longest header line: the server's StreamReader is created with this limit.
MAX_HEADER_BYTES = 64 * 1024
#: A synthesize event's data (its text); Home Assistant resends a whole long answer this way.
MAX_DATA_BYTES = 1024 * 1024
#: No event a TTS server receives carries a payload; a small one is read and dropped.
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_TYPE_CHARS = 64


class FramingError(Exception):
    """The byte stream is not Wyoming or breaks a limit; ``code`` is the bridge's stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PeerClosed(Exception):
    """The peer closed the connection in the middle of an event."""


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FramingError("bad_request", f"{key} must be a non-negative integer")
    if value > limit:
        raise FramingError("too_large", f"{key} {value} is over the limit of {limit} bytes")
    return value


async def read_event(
    reader: asyncio.StreamReader,
    max_data_bytes: int = MAX_DATA_BYTES,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> Event | None:
    """The next event, or None when the peer closed cleanly between events."""
    return (await read_sized_event(reader, max_data_bytes, max_payload_bytes))[0]


async def read_sized_event(
    reader: asyncio.StreamReader,
    max_data_bytes: int = MAX_DATA_BYTES,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> tuple[Event | None, int]:
    """:func:`read_event` and the bytes the event took on the wire (header line, data, payload):
    what holding it costs, for a reader that bounds what it keeps by bytes."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise PeerClosed("closed inside an event header") from None
        return None, 0
    except asyncio.LimitOverrunError:
        raise FramingError("too_large", f"event header line over {MAX_HEADER_BYTES} bytes") from None
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FramingError("bad_request", "event header is not a JSON line") from None
    if not isinstance(header, dict):
        raise FramingError("bad_request", "event header is not a JSON object")
    event_type = header.get("type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > MAX_TYPE_CHARS:
        raise FramingError("bad_request", f"event type must be a string of 1 to {MAX_TYPE_CHARS} characters")
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FramingError("bad_request", "event data is not a JSON object")
    data_length = _length(header, "data_length", max_data_bytes)
    payload_length = _length(header, "payload_length", max_payload_bytes)
    try:
        extra = await reader.readexactly(data_length) if data_length else b""
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise PeerClosed("closed inside an event's data or payload") from None
    if extra:
        try:
            more = json.loads(extra)
        except (ValueError, RecursionError):
            raise FramingError("bad_request", "event data is not JSON") from None
        if not isinstance(more, dict):
            raise FramingError("bad_request", "event data is not a JSON object")
        data = {**data, **more}
    return Event(type=event_type, data=data, payload=payload), len(line) + data_length + payload_length
