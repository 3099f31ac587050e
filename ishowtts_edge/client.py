"""Python client for local apps.

Uses the Lazy Pirate pattern from the ZeroMQ guide: a REQ socket that gets no reply
in time is in a state where it can neither send nor receive, so it is closed
(linger 0) and a fresh one is opened for the bounded retry.  Only idempotent ops are
retried by default; a synthesize that timed out is retried only if asked, because the
daemon may still be working on the first copy.

:meth:`Client.stream` opens a DEALER socket of its own per stream (protocol version 2)
and never retries: a gap longer than the timeout between two messages is an error.
Closing the stream (or leaving the loop early) closes that socket, which the daemon
takes as a cancellation.
"""

from __future__ import annotations

import grp
import itertools
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import zmq

from .protocol import decode_reply, encode_header

#: What plain requests speak (their replies are unchanged since version 1); streams speak 2.
REQUEST_VERSION = 1
STREAM_VERSION = 2

DEFAULT_ENDPOINT = "ipc:///run/ishowtts-edge/tts.sock"

#: How often a stream's reader looks whether another thread has abandoned it (SynthesisStream.abandon).
ABANDON_CHECK_S = 0.05


class ClientError(Exception):
    """The daemon answered with an error; ``code`` is the protocol's stable code."""

    def __init__(self, code: str, message: str, header: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.header = header or {}


class ClientTimeout(ClientError):
    """No reply after every retry."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class EndpointUnavailable(ClientError):
    """Known before sending that nothing can answer: ``code`` is ``not_running`` (no socket, or
    nobody listening on it), ``permission_denied`` or ``bad_endpoint`` (cannot be used as written)."""


def check_endpoint(endpoint: str) -> None:
    """Raise EndpointUnavailable when ``endpoint`` can be seen not to work, without sending anything.

    ZeroMQ connects lazily and retries forever, so a missing ipc socket would otherwise show
    only as a timeout after the full wait.  tcp endpoints are checked for form only.
    """
    from .config import endpoint_problem

    problem = endpoint_problem(endpoint)
    if problem:
        raise EndpointUnavailable("bad_endpoint", f"{endpoint}: {problem}")
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://"):]
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise EndpointUnavailable("not_running", f"{path} does not exist: the daemon is not running") from None
    except PermissionError:
        raise EndpointUnavailable("permission_denied", _permission_message(os.path.dirname(path))) from None
    except OSError as exc:
        raise EndpointUnavailable("not_running", f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise EndpointUnavailable("not_running", f"{path} is not a socket: the daemon is not running there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except PermissionError:
        raise EndpointUnavailable("permission_denied", _permission_message(path)) from None
    except ConnectionRefusedError:
        raise EndpointUnavailable(
            "not_running", f"{path} is left from a daemon that is not running (nothing accepts on it)"
        ) from None
    except OSError:
        return  # e.g. a full backlog: let ZeroMQ try and time out as usual
    finally:
        probe.close()


def _permission_message(path: str) -> str:
    try:
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        group = "ishowtts-edge"
    return f"no permission to use {path}: join group {group!r} (sudo usermod -aG {group} $USER, then log in again) or run as root"


@dataclass
class Synthesis:
    audio: bytes
    header: dict[str, Any]

    @property
    def sample_rate(self) -> int:
        return int(self.header["sample_rate"])

    @property
    def rtf(self) -> float:
        return float(self.header["rtf"])


class Client:
    def __init__(
        self,
        endpoint: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        context: zmq.Context | None = None,
        id_prefix: str | None = None,
        check: bool = False,
    ) -> None:
        self.endpoint = endpoint or os.environ.get("ISHOWTTS_EDGE_ENDPOINT") or DEFAULT_ENDPOINT
        #: Before every attempt, raise EndpointUnavailable at once for an ipc socket that is
        #: missing, stale or not accessible (see check_endpoint) instead of waiting the timeout out.
        #: Off by default: a long-lived client may prefer to wait out a daemon restart.
        self.check = check
        self.timeout_s = timeout_s
        self.retries = retries
        self.context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        #: Request ids are "<prefix>-<n>"; the daemon logs them, so an app may choose its prefix.
        self._prefix = id_prefix or f"{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self._socket: zmq.Socket | None = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _open(self) -> zmq.Socket:
        if self._socket is None:
            sock = self.context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                raise EndpointUnavailable("bad_endpoint", f"{self.endpoint}: {exc}") from None
            self._socket = sock
        return self._socket

    def request(
        self,
        op: str,
        fields: dict[str, Any] | None = None,
        attachments: list[bytes] | None = None,
        *,
        timeout_s: float | None = None,
        retry: bool | None = None,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Send one request; return (header, attachments) of a successful reply or raise ClientError."""
        request_id = f"{self._prefix}-{next(self._ids)}"
        header = {"v": REQUEST_VERSION, "op": op, "id": request_id, **(fields or {})}
        message = [encode_header(header), *(attachments or [])]
        timeout = self.timeout_s if timeout_s is None else timeout_s
        attempts = 1 + (self.retries if (retry if retry is not None else op != "synthesize") else 0)
        for attempt in range(attempts):
            if self.check:
                check_endpoint(self.endpoint)
            sock = self._open()
            sock.send_multipart(message)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sock.poll(int(remaining * 1000), zmq.POLLIN):
                    break
                try:
                    reply_header, reply_attachments = decode_reply(sock.recv_multipart())
                except (ValueError, RecursionError) as exc:  # another app's socket, not this daemon
                    raise ClientError("bad_reply", f"{self.endpoint} answered outside the protocol: {exc}") from None
                if reply_header.get("id") not in (request_id, None):
                    continue  # a late answer to an earlier attempt
                if not reply_header.get("ok"):
                    error = reply_header.get("error")
                    error = error if isinstance(error, dict) else {}
                    raise ClientError(str(error.get("code", "unknown")), str(error.get("message", "")), reply_header)
                return reply_header, reply_attachments
            # Lazy Pirate: the REQ socket is stuck waiting for a reply; replace it.
            self.close()
        raise ClientTimeout(f"no reply from {self.endpoint} after {attempts} attempt(s) of {timeout:.1f}s")

    # -- convenience --------------------------------------------------------------

    def ping(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self.request("ping", timeout_s=timeout_s)[0]

    def status(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self.request("status", timeout_s=timeout_s)[0]

    def health(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self.request("health", timeout_s=timeout_s)[0]

    def metrics(self, timeout_s: float | None = None) -> str:
        """The daemon's Prometheus exposition (text format 0.0.4)."""
        return self.request("metrics", timeout_s=timeout_s)[0]["text"]

    def voices(self) -> list[dict[str, Any]]:
        return self.request("voices")[0]["voices"]

    def synthesize(
        self,
        text: str,
        voice: str | None = None,
        *,
        format: str = "wav",
        ref_audio: bytes | None = None,
        ref_text: str | None = None,
        timeout_s: float | None = None,
        retry: bool = False,
        priority: str | None = None,
        **sampling: Any,
    ) -> Synthesis:
        """Synthesize ``text``.  ``sampling`` may hold nfe_step, cfg_strength, sway_sampling_coef, speed, seed,
        normalize and echo_text (docs/protocol.md).

        ``priority`` is ``"interactive"`` (the daemon's default) or ``"bulk"`` for work nobody
        waits on: waiting interactive requests run first (docs/protocol.md).
        """
        fields = _synthesize_fields(text, voice, format, ref_text, priority, sampling)
        header, attachments = self.request(
            "synthesize", fields, [ref_audio] if ref_audio is not None else None, timeout_s=timeout_s, retry=retry
        )
        if not attachments:
            raise ClientError("bad_reply", "synthesize reply carried no audio frame", header)
        return Synthesis(audio=attachments[0], header=header)

    def stream(
        self,
        text: str,
        voice: str | None = None,
        *,
        format: str = "pcm_s16le",
        ref_audio: bytes | None = None,
        ref_text: str | None = None,
        timeout_s: float | None = None,
        priority: str | None = None,
        **sampling: Any,
    ) -> "SynthesisStream":
        """Synthesize ``text`` as a stream: iterate the result for :class:`AudioChunk` as each arrives.

        ``format`` is ``pcm_s16le`` or ``f32le`` (raw samples; a stream has no WAV header).
        ``sampling`` takes what :meth:`synthesize` takes, and ``chunk_plan``.  ``timeout_s``
        bounds the wait for each message (the first one included), not the whole stream.
        """
        if self.check:
            check_endpoint(self.endpoint)
        fields = _synthesize_fields(text, voice, format, ref_text, priority, sampling)
        request_id = f"{self._prefix}-{next(self._ids)}"
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise EndpointUnavailable("bad_endpoint", f"{self.endpoint}: {exc}") from None
        header = {"v": STREAM_VERSION, "op": "synthesize", "id": request_id, "stream": True, **fields}
        sock.send_multipart([b"", encode_header(header), *([ref_audio] if ref_audio is not None else [])])
        return SynthesisStream(sock, request_id, self.endpoint, self.timeout_s if timeout_s is None else timeout_s)


def _synthesize_fields(text: str, voice: str | None, format: str, ref_text: str | None, priority: str | None,
                       sampling: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"text": text, "format": format}
    if priority is not None:
        fields["priority"] = priority
    if voice is not None:
        fields["voice"] = voice
    if ref_text is not None:
        fields["ref_text"] = ref_text
    fields.update({k: v for k, v in sampling.items() if v is not None})
    return fields


@dataclass
class AudioChunk:
    """One audio message of a stream: raw samples in the stream's format, final as they are."""

    audio: bytes
    seq: int
    chunk: int  # the chunk of the plan it came from
    samples: int


@dataclass
class SynthesisStream:
    """A streamed synthesis: iterate for AudioChunk; then ``end`` holds the timing header.

    ``start`` (sample rate, format, chunk plan) is read with the first message.  A daemon
    error ends the iteration with ClientError (its code), a gap longer than ``timeout_s``
    with ClientTimeout; neither is retried.  Leaving early: :meth:`cancel` (the daemon answers
    ``cancelled``) or :meth:`close` (the socket goes; the daemon cancels too), both from the
    thread that reads; from any other thread, :meth:`abandon`.
    """

    _socket: zmq.Socket | None
    request_id: str
    endpoint: str
    timeout_s: float
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    _cancels: int = field(default=0, repr=False)
    _abandoned: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def sample_rate(self) -> int:
        return int((self.start or {}).get("sample_rate", 0))

    def __enter__(self) -> "SynthesisStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def cancel(self) -> None:
        """Ask the daemon to stop; the iteration then ends with ClientError ``cancelled``."""
        if self._socket is not None:
            self._cancels += 1
            header = {"v": STREAM_VERSION, "op": "cancel", "id": f"{self.request_id}-cancel-{self._cancels}",
                      "request": self.request_id}
            self._socket.send_multipart([b"", encode_header(header)])

    def abandon(self) -> None:
        """Safe from any thread: the reading thread closes the stream (the daemon cancels) within
        ABANDON_CHECK_S, and its iteration ends with ClientError ``closed``.

        A ZeroMQ socket must not be touched by two threads, so a caller that is not the reader
        (an asyncio loop whose peer left while a worker thread waits for audio) cannot close it.
        """
        self._abandoned.set()

    def __iter__(self) -> Iterator[AudioChunk]:
        try:
            while self.end is None:
                header, frames = self._next()
                kind = header.get("stream")
                if kind == "start":
                    self.start = header
                elif kind == "audio":
                    if not frames:
                        raise ClientError("bad_reply", "an audio message carried no audio frame", header)
                    self._ack(header)
                    yield AudioChunk(frames[0], int(header["seq"]), int(header.get("chunk", 0)), int(header["samples"]))
                elif kind == "end":
                    self.end = header
        finally:
            self.close()

    def _ack(self, header: dict[str, Any]) -> None:
        """Tell the daemon what left ZeroMQ's queues: it keeps a stream at most a window ahead."""
        if self._socket is not None:
            ack = {"v": STREAM_VERSION, "op": "ack", "id": f"{self.request_id}-ack", "request": self.request_id,
                   "seq": header["seq"]}
            self._socket.send_multipart([b"", encode_header(ack)])

    def _next(self) -> tuple[dict[str, Any], list[bytes]]:
        sock = self._socket
        if sock is None:
            raise ClientError("closed", "the stream was closed")
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self._abandoned.is_set():
                self.close()
                raise ClientError("closed", "the stream was abandoned")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientTimeout(f"no stream message from {self.endpoint} within {self.timeout_s:.1f}s")
            if not sock.poll(max(1, int(min(remaining, ABANDON_CHECK_S) * 1000)), zmq.POLLIN):
                continue
            frames = sock.recv_multipart()
            if frames and frames[0] == b"":
                frames = frames[1:]
            try:
                header, attachments = decode_reply(frames)
            except (ValueError, RecursionError) as exc:
                raise ClientError("bad_reply", f"{self.endpoint} answered outside the protocol: {exc}") from None
            if header.get("op") == "cancel":
                continue  # the answer to cancel(): the stream's own error message follows
            if header.get("id") != self.request_id:
                continue
            if not header.get("ok"):
                error = header.get("error")
                error = error if isinstance(error, dict) else {}
                raise ClientError(str(error.get("code", "unknown")), str(error.get("message", "")), header)
            return header, attachments
