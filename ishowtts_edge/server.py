"""The ZeroMQ front end: one ROUTER socket, one synthesis worker.

Clients use plain REQ sockets.  A ROUTER (rather than a REP) lets the serving loop
answer ``status``/``health``/``ping``/``voices`` at once while a synthesis runs on
the worker thread, and lets it refuse work with ``busy`` instead of queueing without
bound.  Every request gets exactly one reply, whatever it contains.

ZeroMQ sockets are not thread-safe, so only the serving loop touches the ROUTER; the
worker hands finished replies back through an inproc PUSH/PULL pair.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import zmq

from .logs import kv
from .protocol import (
    CONTROL_OPS,
    ErrorCode,
    Limits,
    Request,
    ServiceError,
    encode_audio,
    error_reply,
    ok_reply,
    parse_request,
)

log = logging.getLogger(__name__)


class SynthesisBackend(Protocol):
    """What the server needs from the daemon for ``synthesize`` and the control ops."""

    def synthesize(self, request: Request) -> tuple[dict[str, Any], list[bytes]]: ...

    def after_reply(self, request: Request) -> None:
        """Bookkeeping that should not delay the reply (the RTF monitor); runs on the worker."""

    def control(self, request: Request) -> dict[str, Any]: ...

    def accepting(self, request: Request) -> ServiceError | None:
        """None when this synthesis request may be queued, else the error to answer."""


@dataclass
class _Job:
    envelope: list[bytes]
    request: Request
    #: perf_counter when the ROUTER handed us the request (before parsing): server_seconds starts here.
    received_at: float
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class ServerStats:
    requests: Counter = field(default_factory=Counter)  # by op
    errors: Counter = field(default_factory=Counter)  # by code
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "errors": dict(self.errors), "started_at": self.started_at}


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


def connect_endpoint(bound: str) -> str:
    """Where a local client reaches a socket bound at ``bound`` (a wildcard tcp host means loopback)."""
    for wildcard, loopback in (("tcp://*:", "tcp://127.0.0.1:"), ("tcp://0.0.0.0:", "tcp://127.0.0.1:"),
                               ("tcp://[::]:", "tcp://[::1]:")):
        if bound.startswith(wildcard):
            return loopback + bound[len(wildcard):]
    return bound


def prepare_ipc(endpoint: str) -> None:
    """Create the socket's directory; remove a stale socket file left by a crash."""
    path = ipc_path(endpoint)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def restrict_ipc(endpoint: str, mode: int = 0o660) -> None:
    """Owner and group only: local apps reach the daemon through its group."""
    path = ipc_path(endpoint)
    if path is not None and path.exists():
        os.chmod(path, mode)


class Server:
    """Serving loop.  Call :meth:`bind`, then :meth:`poll` repeatedly from one thread."""

    def __init__(
        self,
        endpoint: str,
        backend: SynthesisBackend,
        limits: Limits,
        max_queue: int,
        context: zmq.Context | None = None,
        startup: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.backend = backend
        self.limits = limits
        self.context = context or zmq.Context.instance()
        self.stats = ServerStats()
        self.max_queue = max_queue
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0  # queued + running, counted by the serving loop only
        self._done_endpoint = f"inproc://ishowtts-done-{id(self)}"
        self._router: zmq.Socket | None = None
        self._done: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._worker: threading.Thread | None = None
        #: monotonic start of the job the worker is running, None when idle.
        self.job_started: float | None = None
        self.last_worker_beat = time.monotonic()
        self._closing = False
        #: Set by the serving loop once a worker reply has gone out: the worker's after-reply
        #: bookkeeping waits for it, because while it holds the GIL the serving loop cannot send
        #: (measured: +0.3-0.5 ms on every reply when the two overlapped).
        self._reply_sent = threading.Event()
        #: Runs first on the worker thread: the daemon loads and warms up the engine there, so
        #: per-thread CUDA state (cuBLAS/cuDNN handles) is created before READY, not by the
        #: first request.
        self._startup = startup

    # -- life cycle ---------------------------------------------------------------

    def bind(self) -> None:
        prepare_ipc(self.endpoint)
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 1000)
        # A hard memory guard per frame; messages between the configured limit and
        # this get a polite too_large reply, bigger ones drop the connection.
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_message_bytes)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.bind(self.endpoint)
        restrict_ipc(self.endpoint)
        done = self.context.socket(zmq.PULL)
        done.bind(self._done_endpoint)
        self._router, self._done = router, done
        self._poller.register(router, zmq.POLLIN)
        self._poller.register(done, zmq.POLLIN)
        self._worker = threading.Thread(target=self._work, name="synthesis-worker", daemon=True)
        self._worker.start()
        log.info("listening %s", kv(endpoint=self.endpoint))

    def worker_alive(self, max_job_seconds: float) -> bool:
        """True while the worker thread runs and is not stuck in one job for too long."""
        if self._worker is None or not self._worker.is_alive():
            return False
        started = self.job_started
        return started is None or time.monotonic() - started < max_job_seconds

    @property
    def pending(self) -> int:
        return self._pending

    def poll(self, timeout_ms: int) -> None:
        """Handle whatever arrives within ``timeout_ms``."""
        assert self._router is not None and self._done is not None
        events = dict(self._poller.poll(timeout_ms))
        if self._done in events:
            while True:
                try:
                    # Frames, not bytes: the audio is passed on to the ROUTER without a copy.
                    frames = self._done.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._pending -= 1
                self._send(frames)
                self._reply_sent.set()
        if self._router in events:
            for _ in range(64):  # bounded so replies from the worker are not starved
                try:
                    frames = self._router.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                self._handle(frames)

    def drain(self, timeout_s: float) -> None:
        """Stop taking work; answer queued jobs with shutting_down; wait for the running one."""
        self._closing = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._pending -= 1
                self._send(job.envelope + error_reply(job.request.id, ErrorCode.SHUTTING_DOWN, "daemon is stopping", "synthesize"))
        deadline = time.monotonic() + timeout_s
        while self._pending > 0 and time.monotonic() < deadline:
            self.poll(100)
        if self._pending > 0:
            log.warning("stopping with a synthesis still running %s", kv(waited_s=timeout_s))

    def close(self) -> None:
        self._closing = True
        self._jobs.put_nowait(None)
        for sock in (self._router, self._done):
            if sock is not None:
                sock.close(linger=500)
        path = ipc_path(self.endpoint)
        if path is not None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- serving loop side -------------------------------------------------------

    def _send(self, frames: list[Any]) -> None:
        assert self._router is not None
        try:
            self._router.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:  # the client went away (EHOSTUNREACH): nothing to answer
            log.info("reply dropped, client gone %s", kv(reason=exc.strerror))

    def _handle(self, frames: list[bytes]) -> None:
        received_at = time.perf_counter()
        # REQ puts [identity, b"", ...]; a DEALER may omit the empty delimiter.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        request_id: str | None = None
        op: str | None = None
        try:
            request = parse_request(body, self.limits)
            request_id, op = request.id, request.op
            self.stats.requests[op] += 1
            if op in CONTROL_OPS:
                self._send(envelope + ok_reply(request_id, op, self.backend.control(request)))
                return
            refusal = ErrorCode.SHUTTING_DOWN if self._closing else None
            if refusal is not None:
                raise ServiceError(refusal, "daemon is stopping", request_id=request_id)
            blocked = self.backend.accepting(request)
            if blocked is not None:
                raise ServiceError(blocked.code, blocked.message, request_id=request_id)
            if self._pending > self.max_queue:  # one running + max_queue waiting
                raise ServiceError(
                    ErrorCode.BUSY, f"{self._pending} requests already queued or running; retry later", request_id=request_id
                )
            self._jobs.put_nowait(_Job(envelope, request, received_at))
            self._pending += 1
        except ServiceError as exc:
            self.stats.errors[exc.code.value] += 1
            rid = exc.request_id if exc.request_id is not None else request_id
            op = op or exc.op
            log.info("request refused %s", kv(id=rid, op=op, code=exc.code.value, reason=exc.message))
            self._send(envelope + error_reply(rid, exc.code, exc.message, op))
        except Exception as exc:  # a bug in a control op must not kill the loop
            self.stats.errors[ErrorCode.INTERNAL.value] += 1
            log.error("control request failed %s\n%s", kv(id=request_id, op=op), traceback.format_exc())
            self._send(envelope + error_reply(request_id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}", op))

    # -- worker side ---------------------------------------------------------------

    def _work(self) -> None:
        done = self.context.socket(zmq.PUSH)
        done.connect(self._done_endpoint)
        if self._startup is not None:
            try:
                self._startup()
            except Exception:  # the daemon reports load failures itself; the worker must live on
                log.error("worker start-up failed\n%s", traceback.format_exc())
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=1.0)
                except queue.Empty:
                    self.last_worker_beat = time.monotonic()
                    continue
                if job is None:
                    return
                self.job_started = time.monotonic()
                try:
                    reply = self._run(job)
                finally:
                    self.job_started = None
                    self.last_worker_beat = time.monotonic()
                self._reply_sent.clear()
                done.send_multipart(job.envelope + reply, copy=False)
                after = getattr(self.backend, "after_reply", None)
                if after is not None and reply is not None:
                    # Bounded: a serving loop that is itself busy must not hold up the bookkeeping long.
                    self._reply_sent.wait(0.05)
                    try:
                        after(job.request)
                    except Exception:
                        log.error("after-reply hook failed\n%s", traceback.format_exc())
        finally:
            done.close(linger=0)

    def _run(self, job: _Job) -> list[bytes]:
        request = job.request
        try:
            header, attachments = self.backend.synthesize(request)
            header["queue_seconds"] = round(self.job_started - job.queued_at, 6) if self.job_started else 0.0
            # Receipt to reply built: what the daemon adds to a request, for clients measuring transport.
            header["server_seconds"] = round(time.perf_counter() - job.received_at, 6)
            return ok_reply(request.id, request.op, header, attachments)
        except ServiceError as exc:
            self.stats.errors[exc.code.value] += 1
            log.warning("synthesis failed %s", kv(id=request.id, code=exc.code.value, reason=exc.message))
            return error_reply(request.id, exc.code, exc.message, request.op)
        except Exception as exc:
            self.stats.errors[ErrorCode.INTERNAL.value] += 1
            log.error("synthesis crashed %s\n%s", kv(id=request.id, error=type(exc).__name__), traceback.format_exc())
            return error_reply(request.id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", request.op)


def synthesis_payload(result: Any, fmt: str, voice: str | None) -> tuple[dict[str, Any], list[bytes]]:
    """Reply header fields and audio frame for an engine SynthesisResult."""
    audio = encode_audio(result.audio, result.sample_rate, fmt)
    header = {
        "sample_rate": result.sample_rate,
        "channels": 1,
        "format": fmt,
        "samples": int(len(result.audio)),
        "audio_seconds": round(result.audio_seconds, 6),
        "synthesis_seconds": round(result.synthesis_seconds, 6),
        "rtf": round(result.rtf, 6),
        "mel_frames": result.mel_frames,
        "nfe_step": result.nfe_step,
        "chunks": result.chunks,
        "voice": voice,
    }
    return header, [audio]

