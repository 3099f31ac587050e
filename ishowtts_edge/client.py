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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

from .endpoints import ABSENT, NOT_A_SOCKET, STALE, ipc_path, probe_ipc
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
    """Known without waiting for a reply that nothing can answer (the request reached no one):
    ``code`` is ``not_running`` (no socket, or nobody listening on it), ``permission_denied`` or
    ``bad_endpoint`` (cannot be used as written)."""


def _why_unreachable(path: Path) -> EndpointUnavailable | None:
    """Why nothing can answer on the ipc socket ``path`` (endpoints.probe_ipc); None when something
    may (it accepts, or the probe cannot tell: a full backlog), and ZeroMQ keeps trying."""
    try:
        found = probe_ipc(path)
    except PermissionError:
        return EndpointUnavailable("permission_denied", _permission_message(path))
    except OSError:
        return None
    if found == ABSENT:
        return EndpointUnavailable("not_running", f"{path} does not exist: the daemon is not running")
    if found == NOT_A_SOCKET:
        return EndpointUnavailable("not_running", f"{path} is not a socket: the daemon is not running there")
    if found == STALE:
        return EndpointUnavailable(
            "not_running", f"{path} is left from a daemon that is not running (nothing accepts on it)")
    return None


def _permission_message(path: Path) -> str:
    group = "ishowtts-edge"
    for owner in (path, path.parent):  # the socket, or the directory that keeps us from it
        try:
            group = grp.getgrgid(os.stat(owner).st_gid).gr_name
            break
        except (OSError, KeyError):
            continue
    return f"no permission to use {path}: join group {group!r} (sudo usermod -aG {group} $USER, then log in again) or run as root"


class _ConnectWatch:
    """Says why nothing can answer on an ipc endpoint as soon as ZeroMQ fails to connect to it.

    ZeroMQ connects lazily and retries for ever, so a missing, stale or forbidden socket
    would otherwise show only as a timeout after the full wait.  The socket's own monitor
    reports each failed connection (CONNECT_RETRIED); only then is the path probed, so a
    live daemon sees no connection but the client's own.
    """

    EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED

    def __init__(self, sock: zmq.Socket, path: Path) -> None:
        self._sock = sock
        self.path = path
        #: Set up before the socket connects, so that its first attempt is reported too.
        self.monitor: zmq.Socket | None = sock.get_monitor_socket(self.EVENTS)

    def check(self) -> None:
        """Read the events waiting (never blocks); raise EndpointUnavailable when the latest is a
        failed connection and the probe says why."""
        failed = None
        while self.monitor is not None and self.monitor.poll(0):
            failed = recv_monitor_message(self.monitor)["event"] == zmq.EVENT_CONNECT_RETRIED
        if failed:
            problem = _why_unreachable(self.path)
            if problem is not None:
                raise problem

    def close(self) -> None:
        if self.monitor is not None:
            while self.monitor.poll(0):  # room in the pipe, so libzmq can take the monitor down
                self.monitor.recv_multipart()
            self._sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None


def _wait(sock: zmq.Socket, watch: _ConnectWatch | None, timeout_s: float) -> bool:
    """Whether a message waits on ``sock`` within ``timeout_s``; EndpointUnavailable as soon as
    ``watch`` finds that nothing can answer."""
    if watch is None or watch.monitor is None:
        return bool(sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN))
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(watch.monitor, zmq.POLLIN)
    deadline = time.monotonic() + timeout_s
    while True:
        ready = dict(poller.poll(max(0, int((deadline - time.monotonic()) * 1000))))
        if watch.monitor in ready:
            watch.check()
        if sock in ready:
            return True
        if time.monotonic() >= deadline:
            return False


def _read_reply(frames: list[bytes], endpoint: str, ours: Callable[[dict[str, Any]], bool]
                ) -> tuple[dict[str, Any], list[bytes]] | None:
    """(header, attachments) of a successful reply; None for a message that ``ours`` says is not
    the one waited for; ClientError for the daemon's error or a reply outside the protocol."""
    try:
        header, attachments = decode_reply(frames)
    except (ValueError, RecursionError) as exc:  # another app's socket, not this daemon
        raise ClientError("bad_reply", f"{endpoint} answered outside the protocol: {exc}") from None
    if not ours(header):
        return None
    if not header.get("ok"):
        error = header.get("error")
        error = error if isinstance(error, dict) else {}
        raise ClientError(str(error.get("code", "unknown")), str(error.get("message", "")), header)
    return header, attachments


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
        #: Raise EndpointUnavailable at once for an endpoint that cannot be used as written, or an
        #: ipc socket that is missing, stale or not accessible (_ConnectWatch), instead of waiting
        #: the timeout out.  Off by default: a long-lived client may prefer to wait out a daemon restart.
        self.check = check
        self.timeout_s = timeout_s
        self.retries = retries
        self.context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        #: Request ids are "<prefix>-<n>"; the daemon logs them, so an app may choose its prefix.
        self._prefix = id_prefix or f"{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self._socket: zmq.Socket | None = None
        self._watch: _ConnectWatch | None = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _connect(self, kind: int) -> tuple[zmq.Socket, _ConnectWatch | None]:
        """A socket of ``kind`` connected to the endpoint, and its watch when ``check`` is on."""
        path = None
        if self.check:
            from .config import endpoint_problem

            problem = endpoint_problem(self.endpoint)
            if problem:
                raise EndpointUnavailable("bad_endpoint", f"{self.endpoint}: {problem}")
            path = ipc_path(self.endpoint)  # tcp endpoints are checked for form only
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        watch = _ConnectWatch(sock, path) if path is not None else None
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            if watch is not None:
                watch.close()
            sock.close(linger=0)
            raise EndpointUnavailable("bad_endpoint", f"{self.endpoint}: {exc}") from None
        return sock, watch

    def _open(self) -> zmq.Socket:
        if self._socket is None:
            self._socket, self._watch = self._connect(zmq.REQ)
        elif self._watch is None and self.check and (path := ipc_path(self.endpoint)) is not None:
            self._watch = _ConnectWatch(self._socket, path)
        return self._socket

    def _end_watch(self) -> None:
        """The watch lives for one request: between requests nothing reads its monitor, and a daemon
        gone for minutes would fill the monitor's pipe with reconnect events, which stalls the
        context's I/O thread (libzmq blocks on a full monitor pipe) for every socket in the process."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None

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
        try:
            return self._exchange(message, request_id, timeout, attempts)
        finally:
            self._end_watch()

    def _exchange(self, message: list[bytes], request_id: str, timeout: float,
                  attempts: int) -> tuple[dict[str, Any], list[bytes]]:
        for attempt in range(attempts):
            sock = self._open()
            sock.send_multipart(message)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0 or not _wait(sock, self._watch, remaining):
                        break
                except EndpointUnavailable:
                    self.close()  # the REQ socket still waits for its reply: the next request needs a new one
                    raise
                # Another id is a late answer to an earlier attempt.
                reply = _read_reply(sock.recv_multipart(), self.endpoint, lambda h: h.get("id") in (request_id, None))
                if reply is not None:
                    return reply
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
        fields = _synthesize_fields(text, voice, format, ref_text, priority, sampling)
        request_id = f"{self._prefix}-{next(self._ids)}"
        sock, watch = self._connect(zmq.DEALER)
        header = {"v": STREAM_VERSION, "op": "synthesize", "id": request_id, "stream": True, **fields}
        sock.send_multipart([b"", encode_header(header), *([ref_audio] if ref_audio is not None else [])])
        return SynthesisStream(sock, request_id, self.endpoint, self.timeout_s if timeout_s is None else timeout_s,
                               _watch=watch)


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
    _watch: _ConnectWatch | None = field(default=None, repr=False)

    @property
    def sample_rate(self) -> int:
        return int((self.start or {}).get("sample_rate", 0))

    def __enter__(self) -> "SynthesisStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
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
            if not _wait(sock, self._watch, max(0.001, min(remaining, ABANDON_CHECK_S))):
                continue
            frames = sock.recv_multipart()
            if frames and frames[0] == b"":
                frames = frames[1:]
            # The answer to cancel() is skipped: the stream's own error message follows.
            reply = _read_reply(frames, self.endpoint,
                                lambda h: h.get("op") != "cancel" and h.get("id") == self.request_id)
            if reply is not None:
                return reply
