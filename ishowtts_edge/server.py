"""The ZeroMQ front end: one ROUTER socket, read by whichever thread is free.

Clients use plain REQ sockets.  A ROUTER (rather than a REP) lets the daemon answer
``status``/``health``/``ping``/``voices`` at once while a synthesis runs, and lets it
refuse work with ``busy`` instead of queueing without bound.  Every request gets exactly
one reply, whatever it contains.

Two threads share the socket, leader/follower style.  The synthesis worker reads it
while idle, runs the synthesis it receives itself and sends the reply itself: no
hand-off between threads on a request's path.  Each hand-off wakes a sleeping thread,
which after a 30 ms synthesis costs about as much as the ZeroMQ round trip itself
(docs/benchmarks.md, "Daemon overhead and the transport floor").  While the worker is
busy (a synthesis, or the engine's start-up) the serving loop (the daemon's main
thread, :meth:`Server.poll`) reads instead: it answers control ops and queues
synthesize requests for the worker.

ZeroMQ sockets are not thread-safe but may move between threads behind a full memory
barrier: every call on the ROUTER is made under one lock, and neither thread sleeps in
a ZeroMQ call while it holds the lock; both sleep on the socket's ZMQ_FD notification
descriptor (plus a wake-up pipe each) instead.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import threading
import time
import traceback
import weakref
from collections import Counter, deque
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
    #: "ok" or the error code the synthesis was answered with.
    outcome: str = "ok"


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


class _Wakeup:
    """A self-pipe: lets one thread end another's select() early."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def poke(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:  # already poked and not yet drained: enough
            pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)


def _sleep_on(fds: list[int], timeout_s: float) -> None:
    """Wait, without the GIL, until one of ``fds`` is readable or ``timeout_s`` passes."""
    poller = select.poll()  # not select(): no FD_SETSIZE limit on the descriptor numbers
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll(max(0, int(timeout_s * 1000)))  # PEP 475: a signal does not end it early


class Server:
    """Call :meth:`bind`, then :meth:`poll` repeatedly from one thread (the serving loop).

    :meth:`bind` starts the synthesis worker, which runs ``startup`` first and then
    reads the socket itself whenever it has nothing to synthesize.
    """

    #: The idle worker's longest sleep: a safety net, close() and new requests wake it anyway.
    WORKER_IDLE_SECONDS = 1.0

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
        #: Guards the ROUTER and the fields below it; never held while sleeping.
        self._lock = threading.Lock()
        self._router: zmq.Socket | None = None
        self._router_fd = -1
        self._jobs: deque[_Job] = deque()
        self._pending = 0  # queued + running
        #: True while the idle worker is the socket's reader; else the serving loop reads.
        self._worker_reads = False
        self._stopped = False
        self._wake_loop = _Wakeup()
        self._wake_worker = _Wakeup()
        # Closed with the object, not by close(): a serving loop on another thread may still be
        # inside poll() then, and must not find its descriptors closed (or reused) under it.
        weakref.finalize(self, self._wake_loop.close)
        weakref.finalize(self, self._wake_worker.close)
        self._worker: threading.Thread | None = None
        #: monotonic start of the job the worker is running, None when idle.
        self.job_started: float | None = None
        self._closing = False
        #: Called after every reply: (op or None, "ok" or error code, seconds since receipt,
        #: queue seconds of a synthesis that ran or None).  The daemon's metrics.
        self.on_reply: Callable[[str | None, str, float, float | None], None] | None = None
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
        self._router = router
        self._router_fd = router.getsockopt(zmq.FD)
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
        """Serving-loop side: read the socket for up to ``timeout_ms`` while the worker is busy.

        While the worker is the reader this only sleeps (woken early when the worker
        starts a job), so the daemon's loop still runs at its pace.
        """
        with self._lock:
            reading = not self._worker_reads and self._router is not None
            if reading:
                self._read_batch()
        watch = [self._router_fd, self._wake_loop.read_fd] if reading else [self._wake_loop.read_fd]
        _sleep_on(watch, timeout_ms / 1000)
        self._wake_loop.drain()
        with self._lock:
            if not self._worker_reads and self._router is not None:
                self._read_batch()

    def drain(self, timeout_s: float) -> None:
        """Stop taking work; answer queued jobs with shutting_down; wait for the running one."""
        with self._lock:
            self._closing = True
            while self._jobs:
                job = self._jobs.popleft()
                self._pending -= 1
                self._send(job.envelope + error_reply(job.request.id, ErrorCode.SHUTTING_DOWN, "daemon is stopping", "synthesize"))
                self._replied("synthesize", ErrorCode.SHUTTING_DOWN.value, job.received_at)
        deadline = time.monotonic() + timeout_s
        while self._pending > 0 and time.monotonic() < deadline:
            self.poll(100)
        if self._pending > 0:
            log.warning("stopping with a synthesis still running %s", kv(waited_s=timeout_s))

    def close(self) -> None:
        with self._lock:
            self._closing = self._stopped = True
        self._wake_worker.poke()
        self._wake_loop.poke()
        # An idle worker leaves its select() at once; one stuck in a synthesis is not waited for
        # (it is a daemon thread, and finds the socket closed if it ever finishes).
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=2.0)
        with self._lock:
            if self._router is not None:
                self._router.close(linger=500)
                self._router = None
        path = ipc_path(self.endpoint)
        if path is not None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- either reader (called with the lock held) ----------------------------------------

    def _read_batch(self) -> None:
        """Everything the ROUTER holds now, handled; bounded so a flood cannot starve a reply.

        Reading until EAGAIN also re-arms ZMQ_FD: it signals again only for new input.
        """
        assert self._router is not None
        for _ in range(64):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._handle(frames)
        self._poke_reader()  # more left: make sure the reader comes back at once

    def _poke_reader(self) -> None:
        (self._wake_worker if self._worker_reads else self._wake_loop).poke()

    def _replied(self, op: str | None, code: str, received_at: float, queue_seconds: float | None = None) -> None:
        if self.on_reply is not None:
            try:
                self.on_reply(op, code, time.perf_counter() - received_at, queue_seconds)
            except Exception:  # metrics must never cost a reply
                log.error("reply hook failed\n%s", traceback.format_exc())

    def _send(self, frames: list[Any]) -> None:
        if self._router is None:  # closed under a worker that finished late
            return
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
                self._replied(op, "ok", received_at)
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
            self._jobs.append(_Job(envelope, request, received_at))
            self._pending += 1
        except ServiceError as exc:
            self.stats.errors[exc.code.value] += 1
            rid = exc.request_id if exc.request_id is not None else request_id
            op = op or exc.op
            log.info("request refused %s", kv(id=rid, op=op, code=exc.code.value, reason=exc.message))
            self._send(envelope + error_reply(rid, exc.code, exc.message, op))
            self._replied(op, exc.code.value, received_at)
        except Exception as exc:  # a bug in a control op must not kill the loop
            self.stats.errors[ErrorCode.INTERNAL.value] += 1
            log.error("control request failed %s\n%s", kv(id=request_id, op=op), traceback.format_exc())
            self._send(envelope + error_reply(request_id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}", op))
            self._replied(op, ErrorCode.INTERNAL.value, received_at)

    # -- worker side ---------------------------------------------------------------

    def _work(self) -> None:
        if self._startup is not None:
            try:
                self._startup()
            except Exception:  # the daemon reports load failures itself; the worker must live on
                log.error("worker start-up failed\n%s", traceback.format_exc())
        try:
            while True:
                try:
                    job = self._next_job()
                    if job is None:
                        if self._stopped:
                            return
                        _sleep_on([self._router_fd, self._wake_worker.read_fd], self.WORKER_IDLE_SECONDS)
                        self._wake_worker.drain()
                        continue
                    self._execute(job)
                except Exception:  # a bug here must not leave queued requests unanswered forever
                    log.error("synthesis worker recovered from an error\n%s", traceback.format_exc())
                    time.sleep(0.1)  # a persistent fault then logs 10/s, not a busy loop
        finally:
            with self._lock:  # whatever ended the worker, the serving loop must read from now on
                self._worker_reads = False
            self._wake_loop.poke()

    def _next_job(self) -> _Job | None:
        """The next job to run; None (the worker is then the reader) when there is none."""
        with self._lock:
            if self._stopped:
                return None
            if not self._jobs and self._router is not None:
                if not self._worker_reads:
                    self._worker_reads = True
                    self._wake_loop.poke()  # the serving loop stops watching the socket
                self._read_batch()
            if not self._jobs:
                return None
            job = self._jobs.popleft()
            if self._worker_reads:
                self._worker_reads = False
                self._wake_loop.poke()  # the serving loop reads while this job runs
            self.job_started = time.monotonic()
            return job

    def _execute(self, job: _Job) -> None:
        started = self.job_started
        try:
            reply = self._run(job)
        finally:
            self.job_started = None
        with self._lock:
            self._pending -= 1
            if not self._stopped:
                self._send(job.envelope + reply)
                # Sending may have consumed the ZMQ_FD signal of a request that arrived meanwhile;
                # the serving loop, reading while this job ran, must not sleep through it.
                if self._router is not None and self._router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self._poke_reader()
        self._replied(job.request.op, job.outcome, job.received_at,
                      started - job.queued_at if started is not None else None)
        after = getattr(self.backend, "after_reply", None)
        if after is not None:
            try:
                after(job.request)
            except Exception:
                log.error("after-reply hook failed\n%s", traceback.format_exc())

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
            job.outcome = exc.code.value
            log.warning("synthesis failed %s", kv(id=request.id, code=exc.code.value, reason=exc.message))
            return error_reply(request.id, exc.code, exc.message, request.op)
        except Exception as exc:
            self.stats.errors[ErrorCode.INTERNAL.value] += 1
            job.outcome = ErrorCode.INTERNAL.value
            log.error("synthesis crashed %s\n%s", kv(id=request.id, error=type(exc).__name__), traceback.format_exc())
            return error_reply(request.id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", request.op)


def synthesis_payload(
    result: Any, fmt: str, voice: str | None, echo_text: bool = False
) -> tuple[dict[str, Any], list[bytes]]:
    """Reply header fields and audio frame for an engine SynthesisResult (``text``: what was spoken, on request)."""
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
    if echo_text:
        header["text"] = result.text
    return header, [audio]

