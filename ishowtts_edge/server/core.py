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

No peer can stall the others.  Replies are sent without blocking: one a peer cannot
take now (it stopped reading and its pipe is full, or it left) is dropped for that
peer and counted, never waited for.  Waiting synthesis requests sit in one bounded
queue per peer, served round-robin, ``interactive`` before ``bulk`` (docs/protocol.md,
"Queueing and fairness").  A side thread watches the ROUTER's connections (libzmq's
socket monitor) and shuts connections above the cap as they arrive, so the process
never runs out of descriptors (libzmq aborts when an ipc accept fails with EMFILE).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
import traceback
import weakref
from collections import OrderedDict, deque
from typing import Any, Callable, Protocol

import zmq

from ..endpoints import EndpointInUse, claim, release, restrict_ipc
from ..engine import AudioSink, SynthesisResult
from ..logs import kv
from ..protocol import (
    CONTROL_OPS,
    STREAM_OPS,
    ErrorCode,
    Limits,
    Request,
    ServiceError,
    error_reply,
    ok_reply,
    parse_request,
)
from .cancel import CancelOps
from .gate import BURST_DESCRIPTORS, ConnectionGate, connection_cap, descriptors_free, open_monitor
from .job import Job
from .queue import FairQueue
from .stats import RateLimitedLog, ServerStats
from .wakeup import Wakeup, sleep_on
from .worker import SynthesisWorker

log = logging.getLogger(__package__)


class SynthesisBackend(Protocol):
    """What the server needs from the daemon for ``synthesize`` and the control ops."""

    def accepting(self, request: Request) -> ServiceError | None:
        """None when this synthesis request may be queued, else the error to answer."""

    def synthesize(self, request: Request, sink: AudioSink | None = None) -> SynthesisResult:
        """The engine's result; a ServiceError becomes the error reply.  With ``sink`` (a
        streamed request) the audio also goes to the sink as it becomes final."""

    def completed(self, request: Request, result: SynthesisResult) -> None:
        """After the reply left: bookkeeping that must not delay it (log, metrics, RTF monitor)."""

    def control(self, request: Request) -> dict[str, Any]: ...


class Server(SynthesisWorker, CancelOps):
    """Call :meth:`bind`, then :meth:`poll` repeatedly from one thread (the serving loop).

    :meth:`bind` starts the synthesis worker (worker.py), which runs ``startup`` first and then
    reads the socket itself whenever it has nothing to synthesize.
    """

    #: Requests read per batch; the reader comes straight back for more, but another thread
    #: (the worker taking its next job, the serving loop checking for SIGTERM) gets the lock between.
    BATCH = 64
    #: Peers remembered as not reading their replies (bounded: connections are capped anyway).
    MAX_CONGESTED = 4096
    #: How long a replaced worker is waited for at close.
    JOIN_SECONDS = 2.0

    def __init__(
        self,
        endpoint: str,
        backend: SynthesisBackend,
        limits: Limits,
        max_queue: int,
        context: zmq.Context | None = None,
        startup: Callable[[], None] | None = None,
        *,
        max_queue_per_client: int | None = None,
        max_connections: int = 512,
        stream_window_s: float = 120.0,
    ) -> None:
        self.endpoint = endpoint
        self.backend = backend
        self.limits = limits
        self.context = context or zmq.Context.instance()
        self.stats = ServerStats()
        #: Waiting synthesis jobs, and whether one more may wait.
        self._queue = FairQueue(max_queue, max(1, max_queue_per_client if max_queue_per_client is not None
                                               else max_queue + 1))
        self.max_connections = max_connections
        #: Seconds of audio a stream may send beyond what its client acknowledged (docs/protocol.md).
        self.stream_window_s = stream_window_s
        #: Connections that ended, (descriptor, generation), from the gate's thread to the serving loop.
        self._gone: deque[tuple[int, int]] = deque()
        #: Why the last _send failed (peer_full, peer_gone, ...), for a stream to say so.
        self._drop_reason = ""
        #: Guards the ROUTER and the fields below it; never held while sleeping.
        self._lock = threading.Lock()
        self._router: zmq.Socket | None = None
        self._router_fd = -1
        self._ipc_inode: int | None = None
        self._gate: ConnectionGate | None = None
        #: Peers whose last reply could not be delivered because they stopped reading: their requests
        #: get a cheap ``busy`` (no status built, nothing queued) until a reply reaches them again.
        self._congested: OrderedDict[bytes, None] = OrderedDict()
        self._running: Job | None = None
        #: True while the idle worker is the socket's reader; else the serving loop reads.
        self._worker_reads = False
        self._stopped = False
        self._wake_loop = Wakeup()
        self._wake_worker = Wakeup()
        # Closed with the object, not by close(): a serving loop on another thread may still be
        # inside poll() then, and must not find its descriptors closed (or reused) under it.
        weakref.finalize(self, self._wake_loop.close)
        weakref.finalize(self, self._wake_worker.close)
        self._worker: threading.Thread | None = None
        #: monotonic start of the job the worker is running, None when idle.
        self.job_started: float | None = None
        self._closing = False
        #: Called after every reply: (op or None, "ok" or error code, seconds since receipt,
        #: queue seconds of a synthesis that ran or None, seconds from receipt to a stream's
        #: first audio or None).  The daemon's metrics.
        self.on_reply: Callable[[str | None, str, float, float | None, float | None], None] | None = None
        self._log_dropped = RateLimitedLog()
        #: Runs first on the worker thread: the daemon loads and warms up the engine there, so
        #: per-thread CUDA state (cuBLAS/cuDNN handles) is created before READY, not by the
        #: first request.
        self._startup = startup

    # -- life cycle ---------------------------------------------------------------

    def bind(self) -> None:
        """Claim the endpoint (EndpointInUse when something answers there), bind, start the worker."""
        claim(self.endpoint)
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 1000)
        # A hard memory guard per frame; messages between the configured limit and
        # this get a polite too_large reply, bigger ones drop the connection.
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_message_bytes)
        # Unroutable replies raise (EHOSTUNREACH) instead of vanishing; every send is NOBLOCK,
        # so a full peer raises EAGAIN instead of blocking: both are counted as dropped.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        monitor = open_monitor(router)
        try:
            router.bind(self.endpoint)
        except zmq.ZMQError as exc:
            router.disable_monitor()
            monitor.close(linger=0)
            router.close(linger=0)
            if exc.errno == zmq.EADDRINUSE:
                raise EndpointInUse(f"{self.endpoint}: {exc.strerror} (is another daemon running?)") from None
            raise
        try:
            self._ipc_inode = restrict_ipc(self.endpoint)
        except OSError as exc:
            log.warning("socket permissions not set %s", kv(endpoint=self.endpoint, error=exc))
        free = descriptors_free()
        cap = connection_cap(self.max_connections, free)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if cap < self.max_connections:
            log.warning("fewer clients than configured: descriptor limit %s",
                        kv(max_connections=cap, configured=self.max_connections, nofile=nofile))
        if free is not None and free - cap < BURST_DESCRIPTORS:
            log.warning("descriptor limit too low to absorb a burst of connections %s",
                        kv(nofile=nofile, spare=free - cap, needed=BURST_DESCRIPTORS))
        self._gate = ConnectionGate(monitor, self.endpoint, cap, self.stats, on_disconnect=self._disconnected)
        self._router = router
        self._router_fd = router.getsockopt(zmq.FD)
        self._worker = threading.Thread(target=self._work, name="synthesis-worker", daemon=True)
        self._worker.start()
        log.info("listening %s", kv(endpoint=self.endpoint, max_connections=cap))

    def worker_alive(self, max_job_seconds: float) -> bool:
        """True while the worker thread runs and is not stuck in one job for too long."""
        if self._worker is None or not self._worker.is_alive():
            return False
        started = self.job_started
        return started is None or time.monotonic() - started < max_job_seconds

    @property
    def pending(self) -> int:
        """Synthesis requests waiting or running."""
        return self._queue.waiting + (self._running is not None)

    def poll(self, timeout_ms: int) -> None:
        """Serving-loop side: read the socket for up to ``timeout_ms`` while the worker is busy.

        While the worker is the reader this only sleeps (woken early when the worker
        starts a job), so the daemon's loop still runs at its pace.
        """
        with self._lock:
            self._cancel_gone()
            reading = not self._worker_reads and self._router is not None
            if reading:
                self._read_batch()
        watch = [self._router_fd, self._wake_loop.read_fd] if reading else [self._wake_loop.read_fd]
        sleep_on(watch, timeout_ms / 1000)
        self._wake_loop.drain()
        with self._lock:
            self._cancel_gone()
            if not self._worker_reads and self._router is not None:
                self._read_batch()

    def drain(self, timeout_s: float, cancel_after_s: float = 5.0) -> bool:
        """Stop taking work and answer the waiting jobs ``shutting_down``; give the running one
        ``timeout_s`` to finish, then cancel it (its client gets ``shutting_down``) and give it
        ``cancel_after_s`` to reach its next step.  True when nothing runs any more.
        """
        with self._lock:
            self._closing = True
            for job in self._queue.take_all():
                self._answer_waiting(job, ErrorCode.SHUTTING_DOWN, "daemon is stopping")
        if not self._wait_idle(timeout_s):
            running = self._running
            if running is not None:
                log.warning("stopping: cancelling the running synthesis %s", kv(id=running.request.id, waited_s=timeout_s))
                running.request.cancel.cancel(ErrorCode.SHUTTING_DOWN, "daemon is stopping; the synthesis was cancelled")
            if not self._wait_idle(cancel_after_s):
                log.warning("stopping with a synthesis still running %s", kv(waited_s=timeout_s + cancel_after_s))
                with self._lock:  # its client still hears why, though the step in progress has not ended
                    running = self._running
                    if running is not None and not running.answered:
                        running.answered = True
                        running.outcome = ErrorCode.SHUTTING_DOWN.value
                        self._send(running.envelope + running.error(
                            ErrorCode.SHUTTING_DOWN, "daemon is stopping; the synthesis was cancelled"))
                return False
        return True

    def _wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.pending > 0 and time.monotonic() < deadline:
            self.poll(min(100, max(1, int((deadline - time.monotonic()) * 1000))))
        return self.pending == 0

    def close(self) -> bool:
        """Close the socket and remove its file.  True when the worker thread has ended
        (False: it is still inside a synthesis that did not stop, see Daemon.run)."""
        with self._lock:
            self._closing = self._stopped = True
        self._wake_worker.poke()
        self._wake_loop.poke()
        # An idle worker leaves its sleep at once; one stuck in a synthesis is waited for only
        # briefly (it finds the socket closed if it ever finishes).
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=self.JOIN_SECONDS)
        with self._lock:
            if self._router is not None:
                # Not disable_monitor(): libzmq stops the monitor as it destroys the socket, and
                # the gate reads until then (gate.py, ConnectionGate.close, says why).
                self._router.close(linger=500)
                self._router = None
        if self._gate is not None:
            self._gate.close()
        release(self.endpoint, self._ipc_inode)
        return self._worker is None or not self._worker.is_alive()

    # -- either reader (called with the lock held) ----------------------------------------

    def _read_batch(self) -> None:
        """What the ROUTER holds now, handled; bounded so a flood cannot starve a reply.

        Reading until EAGAIN also re-arms ZMQ_FD: it signals again only for new input.
        The ROUTER reads its peers' pipes in turn (fair-queued), so one peer's flood
        takes one share of a batch, and once it stops reading, a cheap ``busy`` each.
        """
        assert self._router is not None
        for _ in range(self.BATCH):
            try:
                parts = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle([part.bytes for part in parts], parts[-1].get(zmq.SRCFD))
        self._poke_reader()  # more left: make sure the reader comes back at once

    def _poke_reader(self) -> None:
        (self._wake_worker if self._worker_reads else self._wake_loop).poke()

    def _replied(self, op: str | None, code: str, received_at: float, queue_seconds: float | None = None,
                 first_audio_at: float | None = None) -> None:
        if self.on_reply is not None:
            try:
                first_audio = first_audio_at - received_at if first_audio_at is not None else None
                self.on_reply(op, code, time.perf_counter() - received_at, queue_seconds, first_audio)
            except Exception:  # metrics must never cost a reply
                log.error("reply hook failed\n%s", traceback.format_exc())

    def _send(self, frames: list[Any]) -> bool:
        """Send without ever waiting: a reply the peer cannot take now is dropped and counted."""
        if self._router is None:  # closed under a worker that finished late
            return False
        peer = frames[0]
        try:
            self._router.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            self._congested.pop(peer, None)
            return True
        except zmq.Again:  # the peer's pipe is full (high-water mark): it stopped reading its replies
            reason = "peer_full"
            self._congested[peer] = None
            self._congested.move_to_end(peer)
            if len(self._congested) > self.MAX_CONGESTED:
                self._congested.popitem(last=False)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer went away
            reason = "peer_gone" if exc.errno == zmq.EHOSTUNREACH else exc.strerror
            self._congested.pop(peer, None)
        self._drop_reason = reason
        self.stats.replies_dropped[reason] += 1
        self._log_dropped(logging.INFO, "reply dropped", reason=reason, total=sum(self.stats.replies_dropped.values()))
        return False

    def _handle(self, frames: list[bytes], fd: int = -1) -> None:
        received_at = time.perf_counter()
        # REQ puts [identity, b"", ...]; a DEALER may omit the empty delimiter.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        peer = envelope[0]
        request_id: str | int | None = None
        op: str | None = None
        request: Request | None = None
        try:
            request = parse_request(body, self.limits)
            request_id, op = request.wire_id, request.op
            self.stats.requests[op] += 1
            if peer in self._congested:  # in flight: more unread replies than ZeroMQ holds for it
                raise ServiceError(ErrorCode.BUSY, "this client is not reading its replies; read them, then retry",
                                   request_id=request_id)
            if op in CONTROL_OPS:
                self._send(envelope + ok_reply(request_id, op, self.backend.control(request), version=request.version))
                self._replied(op, "ok", received_at)
                return
            if op in STREAM_OPS:
                self._stream_op(envelope, request, received_at)
                return
            if self._closing:
                raise ServiceError(ErrorCode.SHUTTING_DOWN, "daemon is stopping", request_id=request_id)
            blocked = self.backend.accepting(request)
            if blocked is not None:
                raise ServiceError(blocked.code, blocked.message, request_id=request_id)
            job = Job(envelope, request, received_at)
            if self._gate is not None:
                job.connection = self._gate.connection(fd)
                if job.connection is None:  # its client left (or was refused) before it was read
                    self._drop_gone(job, "received")
                    return
            self._admit(job)
        except ServiceError as exc:
            self.stats.errors[exc.code.value] += 1
            rid = exc.request_id if exc.request_id is not None else request_id
            op = op or exc.op
            if exc.code is ErrorCode.BUSY:  # a flood of these must not flood the journal
                log.debug("request refused %s", kv(id=rid, op=op, code=exc.code.value, reason=exc.message))
            else:
                log.info("request refused %s", kv(id=rid, op=op, code=exc.code.value, reason=exc.message))
            version = request.version if request is not None else 1
            streamed = request is not None and request.params is not None and request.params.stream
            self._send(envelope + error_reply(rid, exc.code, exc.message, op, version, streamed))
            self._replied(op, exc.code.value, received_at)
        except Exception as exc:  # a bug in a control op must not kill the loop
            self.stats.errors[ErrorCode.INTERNAL.value] += 1
            log.error("control request failed %s\n%s", kv(id=request_id, op=op), traceback.format_exc())
            self._send(envelope + error_reply(request_id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}", op))
            self._replied(op, ErrorCode.INTERNAL.value, received_at)

    # -- admission (lock held) ------------------------------------------------------------

    def _answer_waiting(self, job: Job, code: ErrorCode, message: str) -> None:
        """A waiting job that will never run: its client hears why, and stats and metrics count it."""
        self.stats.errors[code.value] += 1
        self._send(job.envelope + job.error(code, message))
        self._replied("synthesize", code.value, job.received_at)

    def _admit(self, job: Job) -> None:
        """Queue ``job`` or raise ``busy``; a job it displaces is answered ``busy`` now."""
        displaced = self._queue.admit(job, self.pending)
        if displaced is not None:
            self._answer_waiting(displaced, ErrorCode.BUSY,
                                 "the queue is full and this client holds the most of it; retry later")
