"""Wire protocol between local apps and the daemon (documented in docs/protocol.md).

A request is a multipart ZeroMQ message: frame 0 is a UTF-8 JSON header
``{"v": 1, "op": ..., "id": ..., ...fields}``; further frames are binary
attachments (reference audio for ``synthesize``).  A reply mirrors that: frame 0 a
JSON header with ``ok``, frame 1 the audio of a successful ``synthesize``.  Replies
speak the request's version; version 2 adds streamed synthesis (a start, audio
messages and an end for one request), ``cancel`` and ``ack``, none of which a
version 1 request ever receives.

Parsing never raises anything but :class:`ServiceError`, so the server can turn any
bad input into exactly one error reply.
"""

from __future__ import annotations

import enum
import json
import math
import reprlib
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    import numpy as np

#: Versions a request may speak; a reply speaks its request's.
VERSIONS = (1, 2)


class ErrorCode(str, enum.Enum):
    """Stable error codes; apps branch on these, never on the message text."""

    BAD_REQUEST = "bad_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_OP = "unknown_op"
    TOO_LARGE = "too_large"
    UNKNOWN_VOICE = "unknown_voice"
    BAD_REFERENCE = "bad_reference"
    TEXT_TOO_LONG = "text_too_long"
    BUSY = "busy"
    NOT_READY = "not_ready"
    OUT_OF_MEMORY = "out_of_memory"
    SHUTTING_DOWN = "shutting_down"
    CANCELLED = "cancelled"
    SLOW_READER = "slow_reader"
    INTERNAL = "internal"


class ServiceError(Exception):
    """An error that becomes an error reply with a stable code."""

    def __init__(
        self, code: ErrorCode, message: str, *, request_id: str | int | None = None, op: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.op = op


OPS = ("synthesize", "voices", "status", "health", "ping", "metrics", "cancel", "ack")
#: Ops answered by the front end at once, never queued behind a synthesis.
CONTROL_OPS = frozenset({"voices", "status", "health", "ping", "metrics"})
#: Ops of protocol version 2: both name another request of the same connection.  ``ack`` is
#: never answered (it is the stream's flow control), ``cancel`` is.
STREAM_OPS = frozenset({"cancel", "ack"})
AUDIO_FORMATS = ("wav", "pcm_s16le", "f32le")
#: Synthesis priorities, most urgent first: waiting ``interactive`` work runs before ``bulk``
#: work, except that every few picks go to ``bulk`` so it is never starved (docs/protocol.md).
PRIORITIES = ("interactive", "bulk")


class SynthesizeParams(BaseModel):
    """Fields of a ``synthesize`` request.  Unset sampling fields take the daemon's defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1)
    voice: str | None = None
    #: Transcript of the reference audio attached as frame 1 (ad-hoc voice).
    ref_text: str | None = None
    format: Literal["wav", "pcm_s16le", "f32le"] = "wav"
    nfe_step: int | None = Field(default=None, ge=1, le=64)
    cfg_strength: float | None = Field(default=None, ge=0.0, le=10.0)
    sway_sampling_coef: float | None = Field(default=None, ge=-2.0, le=2.0)
    speed: float | None = Field(default=None, ge=0.3, le=3.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    #: Say numbers, dates, times, money, units and abbreviations as words first (docs/protocol.md).
    normalize: bool = True
    #: Return the text as spoken (after normalisation) in the reply header's ``text``.
    echo_text: bool = False
    priority: Literal["interactive", "bulk"] = "interactive"
    #: Send the audio as it is made, in several messages (protocol version 2, a DEALER socket).
    stream: bool = False
    #: How the text is cut into chunks: ``upstream`` (f5-tts's infer_process) or ``short_first``
    #: (the first chunk cut short, as f5-tts's socket server does).  Default: short_first for a
    #: stream, upstream otherwise.  Same plan and seed, same samples, streamed or not.
    chunk_plan: Literal["upstream", "short_first"] | None = None

    @field_validator("cfg_strength", "sway_sampling_coef", "speed", mode="before")
    @classmethod
    def _ints_are_floats(cls, value: Any) -> Any:
        # strict mode refuses 2 for a float; JSON writers often drop the ".0".
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > 2**53:  # float() overflows past 1e308; nothing this large is a valid value
                raise ValueError("must be a finite number in range")
            return float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        # Whitespace, control and format characters (NUL, zero-width space, byte-order mark)
        # say nothing: the model would turn them into noise.
        if all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in value):
            raise ValueError("must contain something to say")
        return value


class Cancellation:
    """Asks a running request to stop at its next step; the engine raises the error it carries.

    Set from another thread (the serving loop at shutdown, later a ``cancel`` op): one
    attribute written under the GIL, read between chunks and sampling steps.
    """

    __slots__ = ("_code", "_message")

    def __init__(self) -> None:
        self._code: ErrorCode | None = None
        self._message = ""

    def cancel(self, code: ErrorCode, message: str) -> None:
        if self._code is None:
            self._message = message
            self._code = code

    @property
    def cancelled(self) -> bool:
        return self._code is not None

    def check(self) -> None:
        """Raise the cancellation's ServiceError if the request was cancelled."""
        if self._code is not None:
            raise ServiceError(self._code, self._message)


@dataclass
class Request:
    op: str
    #: The id as text, for logs and bookkeeping.
    id: str
    header: dict[str, Any]
    attachments: list[bytes] = field(default_factory=list)
    params: SynthesizeParams | None = None
    #: The id exactly as the client sent it (a string or an integer), echoed in the reply.
    wire_id: str | int | None = None
    cancel: Cancellation = field(default_factory=Cancellation)
    #: The protocol version the request spoke; its replies speak it too.
    version: int = 1
    #: ``cancel`` and ``ack``: the id of the request they name, as sent.
    target: str | int | None = None
    #: ``ack``: the sequence number of the last audio message read.
    seq: int | None = None

    def __post_init__(self) -> None:
        if self.wire_id is None:
            self.wire_id = self.id


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_text_chars: int
    max_reference_bytes: int


def parse_request(frames: list[bytes], limits: Limits) -> Request:
    """Validate a request message; raise ServiceError (with the request id when known)."""
    if not frames:
        raise ServiceError(ErrorCode.BAD_REQUEST, "empty message: frame 0 must be a JSON header")
    total = sum(len(f) for f in frames)
    if total > limits.max_message_bytes:
        raise ServiceError(
            ErrorCode.TOO_LARGE, f"message is {total} bytes; the limit is {limits.max_message_bytes}"
        )
    try:
        text = frames[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServiceError(ErrorCode.BAD_REQUEST, f"header is not valid UTF-8 (byte {exc.start})") from None
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServiceError(ErrorCode.BAD_REQUEST, f"header is not JSON: {exc.msg} at char {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits, nesting deeper than the stack
        raise ServiceError(ErrorCode.BAD_REQUEST, f"header is not usable JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ServiceError(ErrorCode.BAD_REQUEST, "header must be a JSON object")
    if _has_lone_surrogate(text, header):
        # JSON lets "\ud800" through; such a string cannot be logged, echoed or read as text.
        raise ServiceError(ErrorCode.BAD_REQUEST, "header has a string with a lone UTF-16 surrogate (\\ud800-\\udfff)")

    raw_id = header.get("id")
    wire_id: str | int
    if raw_id is None:
        wire_id = uuid.uuid4().hex[:12]
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and len(str(raw_id)) <= 128:
        wire_id = raw_id  # echoed as sent: an integer stays a JSON number
    else:
        raise ServiceError(ErrorCode.BAD_REQUEST, "id must be a string or integer of at most 128 characters")

    request_id = str(wire_id)

    def fail(code: ErrorCode, message: str) -> ServiceError:
        known_op = op if isinstance(op, str) and op in OPS else None
        return ServiceError(code, message, request_id=wire_id, op=known_op)

    op = header.get("op")
    version = header.get("v", 1)
    if isinstance(version, bool) or version not in VERSIONS:  # true == 1 in Python, not in the protocol
        raise fail(ErrorCode.UNSUPPORTED_VERSION,
                   f"protocol version {peer_repr(version)}; this daemon speaks {' and '.join(map(str, VERSIONS))}")
    if not isinstance(op, str):
        raise fail(ErrorCode.BAD_REQUEST, "op is missing or not a string")
    if op not in OPS:
        raise fail(ErrorCode.UNKNOWN_OP, f"unknown op {peer_repr(op)}; known: {', '.join(OPS)}")

    attachments = list(frames[1:])
    request = Request(op=op, id=request_id, header=header, attachments=attachments, wire_id=wire_id, version=version)
    if op in STREAM_OPS:
        if version < 2:
            raise fail(ErrorCode.UNKNOWN_OP, f"op {op} needs protocol version 2 (\"v\": 2)")
        _parse_stream_op(request, fail)
    if op != "synthesize":
        if attachments:
            raise fail(ErrorCode.BAD_REQUEST, f"op {op} takes no binary frames, got {len(attachments)}")
        return request

    if len(attachments) > 1:
        raise fail(ErrorCode.BAD_REQUEST, f"synthesize takes at most one binary frame, got {len(attachments)}")
    fields = {k: v for k, v in header.items() if k not in ("v", "op", "id")}
    try:
        params = SynthesizeParams.model_validate(fields)
    except ValidationError as exc:
        raise fail(ErrorCode.BAD_REQUEST, _validation_message(exc)) from None
    if len(params.text) > limits.max_text_chars:
        raise fail(
            ErrorCode.TEXT_TOO_LONG, f"text has {len(params.text)} characters; the limit is {limits.max_text_chars}"
        )
    if attachments:
        if len(attachments[0]) > limits.max_reference_bytes:
            raise fail(
                ErrorCode.TOO_LARGE,
                f"reference audio is {len(attachments[0])} bytes; the limit is {limits.max_reference_bytes}",
            )
        if not params.ref_text or not params.ref_text.strip():
            raise fail(ErrorCode.BAD_REQUEST, "a reference audio frame needs ref_text (its transcript)")
        if params.voice is not None:
            raise fail(ErrorCode.BAD_REQUEST, "give either voice or a reference audio frame, not both")
    elif params.ref_text is not None:
        raise fail(ErrorCode.BAD_REQUEST, "ref_text given without a reference audio frame")
    if params.stream:
        if version < 2:
            raise fail(ErrorCode.BAD_REQUEST, 'stream needs protocol version 2 ("v": 2)')
        if "format" not in params.model_fields_set:
            params.format = "pcm_s16le"
        elif params.format == "wav":
            raise fail(ErrorCode.BAD_REQUEST, "a stream carries raw samples: format pcm_s16le or f32le")
    request.params = params
    return request


def _parse_stream_op(request: Request, fail: Any) -> None:
    """``cancel``: {"request": id}; ``ack``: {"request": id, "seq": n}.  Nothing else."""
    fields = {k: v for k, v in request.header.items() if k not in ("v", "op", "id")}
    allowed = {"request", "seq"} if request.op == "ack" else {"request"}
    extra = sorted(set(fields) - allowed)
    if extra:
        raise fail(ErrorCode.BAD_REQUEST, f"{peer_repr(extra[0])}: unknown field")
    target = fields.get("request")
    if not isinstance(target, (str, int)) or isinstance(target, bool) or len(str(target)) > 128:
        raise fail(ErrorCode.BAD_REQUEST, "request must be the id (string or integer) of a request of this connection")
    request.target = target
    if request.op == "ack":
        seq = fields.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**53:
            raise fail(ErrorCode.BAD_REQUEST, "seq must be the sequence number (integer >= 0) of an audio message")
        request.seq = seq


def _has_lone_surrogate(text: str, header: dict[str, Any]) -> bool:
    """True when a JSON escape decoded to an unpaired surrogate (a valid pair decodes to one code point)."""
    if "\\u" not in text:  # the only way to write a surrogate in text that decoded as UTF-8
        return False
    try:
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except RecursionError:  # the encoder needs a few frames more than the decoder that just read it
        raise ServiceError(ErrorCode.BAD_REQUEST, "header is not usable JSON: nested too deeply") from None
    return False


#: How a peer's value is quoted in an error message, which is echoed and logged: short, never whole.
_PEER_VALUE = reprlib.Repr()
_PEER_VALUE.maxstring = _PEER_VALUE.maxother = 40
_PEER_VALUE.maxlevel = 2
MAX_LISTED_ERRORS = 5


def peer_repr(value: Any) -> str:
    """``repr`` of a value a peer sent, cut short for an error message (which is echoed and logged)."""
    return _PEER_VALUE.repr(value)


def _validation_message(exc: ValidationError) -> str:
    errors = exc.errors()
    parts = []
    for error in errors[:MAX_LISTED_ERRORS]:
        key = ".".join(str(p) for p in error["loc"]) or "header"
        key = key if len(key) <= 40 else peer_repr(key)
        reason = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{key}: {reason}")
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return "; ".join(parts)


def encode_header(header: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; a string that UTF-8 cannot carry (a lone surrogate) is sent \\u-escaped, never an exception."""
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(header, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def ok_reply(request_id: str | int | None, op: str, payload: dict[str, Any], attachments: list[bytes] | None = None,
             version: int = 1) -> list[bytes]:
    header = {"v": version, "ok": True, "id": request_id, "op": op, **payload}
    return [encode_header(header), *(attachments or [])]


def error_reply(request_id: str | int | None, code: ErrorCode, message: str, op: str | None = None,
                version: int = 1, stream: bool = False) -> list[bytes]:
    """An error; ``stream``: the message that ends a stream (version 2), marked ``"stream": "error"``."""
    header: dict[str, Any] = {"v": version, "ok": False, "id": request_id, "op": op}
    if stream:
        header["stream"] = "error"
    header["error"] = {"code": code.value, "message": message}
    return [encode_header(header)]


def stream_message(request_id: str | int | None, kind: str, payload: dict[str, Any],
                   attachments: list[bytes] | None = None) -> list[bytes]:
    """One message of a stream (version 2): ``kind`` is start, audio or end (errors: error_reply)."""
    return ok_reply(request_id, "synthesize", {"stream": kind, **payload}, attachments, version=2)


def decode_reply(frames: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Client side: split a reply into its header and attachments."""
    if not frames:
        raise ValueError("empty reply")
    header = json.loads(frames[0].decode("utf-8"))
    if not isinstance(header, dict) or "ok" not in header:
        raise ValueError("reply header is not a protocol object")
    return header, list(frames[1:])


def encode_audio(samples: "np.ndarray", sample_rate: int, fmt: str) -> bytes:
    """Encode mono float32 samples in [-1, 1] as a WAV file, raw s16le PCM or raw f32le.

    This runs on every reply, so it avoids temporaries: libsndfile took 1.2 ms to write a
    4 s WAV on the H100 host (0.85 ms here), in-place numpy and the stdlib's ``wave`` header
    0.2 ms here.  WAV and pcm_s16le carry the same samples, x * 32767 rounded half to even
    (libsndfile scaled by 32768 and clipped: at most 2 LSB apart, -84 dBFS).
    """
    import io
    import wave

    import numpy as np

    mono = np.asarray(samples, dtype=np.float32).reshape(-1)
    if mono.size and (mono.max() > 1.0 or mono.min() < -1.0):  # the engine clips already: no copy then
        mono = np.clip(mono, -1.0, 1.0)
    if fmt == "f32le":
        return mono.astype("<f4", copy=False).tobytes()
    if fmt not in ("pcm_s16le", "wav"):
        raise ValueError(f"unknown audio format {fmt!r}")
    scaled = np.multiply(mono, np.float32(32767.0), dtype=np.float32)
    np.rint(scaled, out=scaled)
    pcm = scaled.astype("<i2")
    if fmt == "pcm_s16le":
        return pcm.tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buf.getvalue()
