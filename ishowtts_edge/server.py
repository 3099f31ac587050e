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
import os
import resource
import select
import socket
import threading
import time
import traceback
import weakref
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import zmq

from .engine import AudioSink, SynthesisResult
from .endpoints import EndpointInUse, claim, connect_endpoint, ipc_path, release, restrict_ipc
from .logs import kv
from .protocol import peer_repr as peer_id
from .protocol import (
    CONTROL_OPS,
    PRIORITIES,
    STREAM_OPS,
    ErrorCode,
    Limits,
    Request,
    ServiceError,
    encode_audio,
    error_reply,
    ok_reply,
    parse_request,
    stream_message,
)

log = logging.getLogger(__name__)


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


@dataclass
class _Job:
    envelope: list[bytes]
    request: Request
    #: perf_counter when the ROUTER handed us the request (before parsing): server_seconds starts here.
    received_at: float
    queued_at: float = field(default_factory=time.monotonic)
    #: "ok" or the error code the synthesis was answered with.
    outcome: str = "ok"
    #: Set (under the server's lock) once its client has had a reply: at stop, a synthesis that
    #: does not reach its next step in time is answered by the stopping thread instead.
    answered: bool = False
    #: The connection it came on: (descriptor, the gate's count of connections accepted on it).
    connection: tuple[int, int] | None = None
    #: perf_counter when a stream's first audio message left.
    first_audio_at: float | None = None
    stream: "_Stream | None" = None

    @property
    def streamed(self) -> bool:
        return self.request.params is not None and self.request.params.stream

    def error(self, code: ErrorCode, message: str) -> list[bytes]:
        """The error message for this job, as its client expects it (a stream's ends the stream)."""
        return error_reply(self.request.wire_id, code, message, "synthesize", self.request.version, self.streamed)

    @property
    def peer(self) -> bytes:
        return self.envelope[0]

    @property
    def priority(self) -> str:
        params = self.request.params
        return params.priority if params is not None else PRIORITIES[0]


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
    #: Synthesis requests cancelled, by how: ``op`` (a cancel request), ``disconnect`` (a streaming
    #: client left), ``slow_reader`` (a stream's client stopped reading).
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


class _RateLimitedLog:
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


__all__ = ["Server", "ServerStats", "connect_endpoint", "ipc_path", "synthesis_header"]


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


class _ConnectionGate:
    """Counts the ROUTER's connections, shuts every new one above the cap at once, and reports
    the ones that end (a streaming client that left is cancelled: see Server._disconnected).

    libzmq reports each accepted connection with its descriptor (the socket monitor's
    ACCEPTED event); shutting that descriptor down makes libzmq drop the connection
    (DISCONNECTED) while the listener and every other connection stay as they are.
    Unbinding would not do: it closes the connections accepted on the endpoint too.
    A refused client's ZeroMQ socket reconnects by itself and gets in once a connection
    closes.  Runs on its own thread so it keeps up with a burst of connections while
    the worker synthesizes; it never touches the ROUTER itself.

    A message names its connection by descriptor (ZMQ_SRCFD), and descriptors are reused.
    Each ACCEPTED on a descriptor starts a new generation of it; libzmq queues a
    connection's ACCEPTED (and the previous one's DISCONNECTED) on the monitor before any of
    its messages can be read, so :meth:`connection`, which reads the monitor first, names
    the right one.
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

    def __init__(self, monitor: zmq.Socket, endpoint: str, cap: int, stats: ServerStats,
                 on_disconnect: Callable[[int, int], None] | None = None) -> None:
        self._monitor = monitor
        self._monitor_fd = monitor.getsockopt(zmq.FD)
        self._endpoint = endpoint
        self._stats = stats
        stats.max_connections = cap
        self.cap = cap
        self._open: set[int] = set()
        self._refused: set[int] = set()
        self._generation: dict[int, int] = {}
        self._on_disconnect = on_disconnect
        #: Guards the monitor socket: read by the gate's thread and by connection().
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._log_refused = _RateLimitedLog()
        self._thread = threading.Thread(target=self._run, name="connection-gate", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def connection(self, fd: int) -> tuple[int, int]:
        """(descriptor, generation) of the connection a message just read came from."""
        self._drain()
        return fd, self._generation.get(fd, 0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                _sleep_on([self._monitor_fd], 0.2)
                if not self._drain():
                    return
        finally:
            with self._lock:
                self._closed = True
                self._monitor.close(linger=0)

    def _drain(self) -> bool:
        """Handle every event queued now; False once the monitor has stopped."""
        from zmq.utils.monitor import recv_monitor_message

        with self._lock:
            if self._closed:
                return False
            try:
                while True:
                    try:
                        event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
                    except zmq.Again:
                        return True
                    if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                        return False
                    self._on_event(int(event["event"]), int(event["value"]))
            except zmq.ZMQError as exc:  # the context is being torn down
                log.debug("connection gate ended %s", kv(reason=exc.strerror))
                return False

    def _on_event(self, event: int, fd: int) -> None:
        if event == zmq.EVENT_DISCONNECTED:
            if fd in self._refused:
                self._refused.discard(fd)
            else:
                self._open.discard(fd)
                if self._on_disconnect is not None:
                    self._on_disconnect(fd, self._generation.get(fd, 0))
        elif event == zmq.EVENT_ACCEPTED:
            self._generation[fd] = self._generation.get(fd, 0) + 1
            if len(self._open) < self.cap:
                self._open.add(fd)
            elif self._shut(fd):
                self._refused.add(fd)
                self._stats.connections_refused += 1
                self._log_refused(logging.WARNING, "connection refused: too many clients", open=len(self._open), max=self.cap)
            else:
                self._open.add(fd)  # not ours after all (already gone): its DISCONNECTED still comes
        self._stats.connections = len(self._open)

    def _shut(self, fd: int) -> bool:
        """shutdown() the accepted socket ``fd``, after checking it still is a connection to our endpoint."""
        try:
            sock = socket.socket(fileno=fd)  # no dup: near the descriptor limit there may be none to spare
        except OSError:
            return False
        try:
            if not _same_endpoint(sock.getsockname(), self._endpoint):
                return False
            sock.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            return False
        finally:
            sock.detach()  # the descriptor stays libzmq's: it closes it when it drops the connection


def _same_endpoint(name: Any, endpoint: str) -> bool:
    """Whether an accepted socket's local address is ``endpoint`` (guards against a reused descriptor)."""
    if endpoint.startswith("ipc://"):
        path = ipc_path(endpoint)
        want = str(path) if path is not None else "\0" + endpoint[len("ipc://@"):]  # "@name": abstract namespace
        return isinstance(name, (str, bytes)) and os.fsdecode(name) == want
    if isinstance(name, tuple) and len(name) >= 2:
        return endpoint.rsplit(":", 1)[-1] in (str(name[1]), "*")
    return False


def connection_cap(configured: int) -> int:
    """``configured``, or less when the descriptor limit leaves no room for that many and a margin.

    Half of the descriptors still free at bind go to clients: the other half is for what
    the engine opens later and for connections accepted before the gate shuts them.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    return max(1, min(configured, (soft - in_use) // 2))


class Server:
    """Call :meth:`bind`, then :meth:`poll` repeatedly from one thread (the serving loop).

    :meth:`bind` starts the synthesis worker, which runs ``startup`` first and then
    reads the socket itself whenever it has nothing to synthesize.
    """

    #: The idle worker's longest sleep: a safety net, close() and new requests wake it anyway.
    WORKER_IDLE_SECONDS = 1.0
    #: Requests read per batch; the reader comes straight back for more, but another thread
    #: (the worker taking its next job, the serving loop checking for SIGTERM) gets the lock between.
    BATCH = 64
    #: Peers remembered as not reading their replies (bounded: connections are capped anyway).
    MAX_CONGESTED = 4096
    #: When both priorities wait, every BULK_EVERY-th pick is a bulk request.
    BULK_EVERY = 4
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
        #: Synthesis requests waiting behind the running one, all peers together.
        self.max_queue = max_queue
        #: Synthesis requests one peer may have waiting or running.
        self.max_queue_per_client = max(1, max_queue_per_client if max_queue_per_client is not None else max_queue + 1)
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
        self._gate: _ConnectionGate | None = None
        #: Waiting jobs: per priority, per peer (round-robin: a served peer moves to the back).
        self._queues: dict[str, OrderedDict[bytes, deque[_Job]]] = {p: OrderedDict() for p in PRIORITIES}
        self._waiting = 0
        self._per_peer: Counter[bytes] = Counter()  # waiting + running, by peer
        self._bulk_passed = 0  # interactive picks in a row while bulk work waited
        #: Peers whose last reply could not be delivered because they stopped reading: their requests
        #: get a cheap ``busy`` (no status built, nothing queued) until a reply reaches them again.
        self._congested: OrderedDict[bytes, None] = OrderedDict()
        self._running: _Job | None = None
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
        #: queue seconds of a synthesis that ran or None, seconds from receipt to a stream's
        #: first audio or None).  The daemon's metrics.
        self.on_reply: Callable[[str | None, str, float, float | None, float | None], None] | None = None
        self._log_dropped = _RateLimitedLog()
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
        try:
            router.bind(self.endpoint)
        except zmq.ZMQError as exc:
            router.close(linger=0)
            if exc.errno == zmq.EADDRINUSE:
                raise EndpointInUse(f"{self.endpoint}: {exc.strerror} (is another daemon running?)") from None
            raise
        try:
            self._ipc_inode = restrict_ipc(self.endpoint)
        except OSError as exc:
            log.warning("socket permissions not set %s", kv(endpoint=self.endpoint, error=exc))
        cap = connection_cap(self.max_connections)
        if cap < self.max_connections:
            log.warning("fewer clients than configured: descriptor limit %s",
                        kv(max_connections=cap, configured=self.max_connections,
                           nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
        self._gate = _ConnectionGate(router.get_monitor_socket(_ConnectionGate.EVENTS), self.endpoint, cap, self.stats,
                                     on_disconnect=self._disconnected)
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
        return self._waiting + (self._running is not None)

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
        _sleep_on(watch, timeout_ms / 1000)
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
            for job in self._take_all_waiting():
                self._send(job.envelope + job.error(ErrorCode.SHUTTING_DOWN, "daemon is stopping"))
                self._replied("synthesize", ErrorCode.SHUTTING_DOWN.value, job.received_at)
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
                try:
                    self._router.disable_monitor()
                except zmq.ZMQError:
                    pass
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
            job = _Job(envelope, request, received_at)
            if job.streamed and self._gate is not None:
                job.connection = self._gate.connection(fd)
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

    # -- the queue (lock held) ----------------------------------------------------------

    def _admit(self, job: _Job) -> None:
        """Queue ``job`` or raise ``busy``.  A full queue makes room for a peer with less waiting
        (or for interactive work) by refusing the newest job of the peer holding the most."""
        peer = job.peer
        if self._per_peer[peer] >= self.max_queue_per_client:
            raise ServiceError(ErrorCode.BUSY, f"this client has {self._per_peer[peer]} requests queued or running; "
                               "wait for a reply, then retry", request_id=job.request.wire_id)
        if self._waiting >= self.max_queue:
            victim = self._displaceable(job)
            if victim is None:
                raise ServiceError(ErrorCode.BUSY, f"{self.pending} requests already queued or running; retry later",
                                   request_id=job.request.wire_id)
            self._remove_newest(victim)
        self._queues[job.priority].setdefault(peer, deque()).append(job)
        self._waiting += 1
        self._per_peer[peer] += 1

    def _displaceable(self, job: _Job) -> tuple[str, bytes] | None:
        """The (priority, peer) whose newest waiting job gives way to ``job``, if any: lower-priority
        work first, else a peer of the same priority with at least two more waiting than ``job``'s."""
        rank = PRIORITIES.index(job.priority)
        for level in reversed(PRIORITIES[rank:]):
            queue = self._queues[level]
            if not queue:
                continue
            peer, jobs = max(queue.items(), key=lambda item: len(item[1]))
            if level != job.priority:
                return level, peer
            if len(jobs) >= len(queue.get(job.peer, ())) + 2:
                return level, peer
        return None

    def _remove_newest(self, where: tuple[str, bytes]) -> None:
        level, peer = where
        jobs = self._queues[level][peer]
        victim = jobs.pop()
        if not jobs:
            del self._queues[level][peer]
        self._waiting -= 1
        self._release_peer(peer)
        self.stats.errors[ErrorCode.BUSY.value] += 1
        self._send(victim.envelope + victim.error(ErrorCode.BUSY,
                                                  "the queue is full and this client holds the most of it; retry later"))

    def _release_peer(self, peer: bytes) -> None:
        self._per_peer[peer] -= 1
        if self._per_peer[peer] <= 0:
            del self._per_peer[peer]

    def _pop_job(self) -> _Job | None:
        """The next job: round-robin over peers, interactive first, bulk every BULK_EVERY-th pick."""
        interactive, bulk = (self._queues[p] for p in PRIORITIES)
        if not interactive and not bulk:
            return None
        if bulk and (not interactive or self._bulk_passed >= self.BULK_EVERY - 1):
            queue, self._bulk_passed = bulk, 0
        else:
            queue = interactive
            self._bulk_passed = self._bulk_passed + 1 if bulk else 0
        peer, jobs = next(iter(queue.items()))
        job = jobs.popleft()
        if jobs:
            queue.move_to_end(peer)
        else:
            del queue[peer]
        self._waiting -= 1
        return job

    def _take_all_waiting(self) -> list[_Job]:
        jobs = []
        while (job := self._pop_job()) is not None:
            self._release_peer(job.peer)
            jobs.append(job)
        return jobs

    # -- cancellation (lock held, except _disconnected) -------------------------------

    def _disconnected(self, fd: int, generation: int) -> None:
        """The gate's thread: a connection ended.  The serving loop cancels its streams."""
        self._gone.append((fd, generation))
        self._wake_loop.poke()

    def _cancel_gone(self) -> None:
        """Streams of connections that ended: a waiting one is dropped, the running one cancelled."""
        while self._gone:
            gone = self._gone.popleft()
            for job in self._waiting_jobs():
                if job.connection == gone:
                    self._unqueue(job)
                    self.stats.cancelled["disconnect"] += 1
                    log.info("stream cancelled %s", kv(id=job.request.id, why="client gone", was="queued"))
            running = self._running
            if running is not None and running.connection == gone and not running.request.cancel.cancelled:
                running.request.cancel.cancel(ErrorCode.CANCELLED, "the client disconnected")
                self.stats.cancelled["disconnect"] += 1
                log.info("stream cancelled %s", kv(id=running.request.id, why="client gone", was="running"))

    def _waiting_jobs(self) -> list[_Job]:
        return [job for queue in self._queues.values() for jobs in queue.values() for job in jobs]

    def _unqueue(self, job: _Job) -> None:
        queue = self._queues[job.priority]
        jobs = queue[job.peer]
        jobs.remove(job)
        if not jobs:
            del queue[job.peer]
        self._waiting -= 1
        self._release_peer(job.peer)

    def _stream_op(self, envelope: list[bytes], request: Request, received_at: float) -> None:
        """``cancel`` (answered) and ``ack`` (never answered) name a request of the same connection."""
        peer = envelope[0]
        running = self._running
        target = running if running is not None and running.peer == peer and running.request.wire_id == request.target \
            else None
        if request.op == "ack":
            if target is not None and target.stream is not None and request.seq is not None:
                target.stream.ack(request.seq)
            return
        was = None
        if target is not None:
            if not target.request.cancel.cancelled:
                target.request.cancel.cancel(ErrorCode.CANCELLED, "cancelled by the client")
                self.stats.cancelled["op"] += 1
                was = "running"
        else:
            for job in self._waiting_jobs():
                if job.peer == peer and job.request.wire_id == request.target:
                    self._unqueue(job)
                    self.stats.cancelled["op"] += 1
                    self.stats.errors[ErrorCode.CANCELLED.value] += 1
                    self._send(job.envelope + job.error(ErrorCode.CANCELLED, "cancelled by the client before it ran"))
                    self._replied("synthesize", ErrorCode.CANCELLED.value, job.received_at)
                    was = "queued"
                    break
        if was is not None:
            log.info("request cancelled %s", kv(id=peer_id(request.target), by="cancel", was=was))
        self._send(envelope + ok_reply(request.wire_id, "cancel", {"cancelled": was is not None, "was": was},
                                       version=request.version))
        self._replied("cancel", "ok", received_at)

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
            if not self._waiting and self._router is not None:
                if not self._worker_reads:
                    self._worker_reads = True
                    self._wake_loop.poke()  # the serving loop stops watching the socket
                self._read_batch()
            job = self._pop_job()
            if job is None:
                return None
            if self._worker_reads:
                self._worker_reads = False
                self._wake_loop.poke()  # the serving loop reads while this job runs
            self._running = job
            self.job_started = time.monotonic()
            return job

    def _execute(self, job: _Job) -> None:
        started = self.job_started
        try:
            reply, result = self._run(job)
        finally:
            self.job_started = None
        with self._lock:
            self._running = None
            self._release_peer(job.peer)
            if not self._stopped and not job.answered:
                job.answered = True
                self._send(job.envelope + reply)
                # Sending may have consumed the ZMQ_FD signal of a request that arrived meanwhile;
                # the serving loop, reading while this job ran, must not sleep through it.
                if self._router is not None and self._router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self._poke_reader()
        self._replied(job.request.op, job.outcome, job.received_at,
                      started - job.queued_at if started is not None else None, job.first_audio_at)
        if result is not None:
            try:
                self.backend.completed(job.request, result)
            except Exception:
                log.error("completion hook failed\n%s", traceback.format_exc())

    def _run(self, job: _Job) -> tuple[list[bytes], SynthesisResult | None]:
        """The reply to send (a stream's end) and, for a synthesis that succeeded, the engine's result."""
        request = job.request
        params = request.params
        assert params is not None
        try:
            request.cancel.check()  # cancelled while it waited
            if job.streamed:
                job.stream = _Stream(self, job)
            result = self.backend.synthesize(request, job.stream)
            header = synthesis_header(result, params.format, params.echo_text)
            header["queue_seconds"] = round(self.job_started - job.queued_at, 6) if self.job_started else 0.0
            # Receipt to reply built: what the daemon adds to a request, for clients measuring transport.
            header["server_seconds"] = round(time.perf_counter() - job.received_at, 6)
            if job.stream is not None:
                return job.stream.end(header), result
            audio = encode_audio(result.audio, result.sample_rate, params.format)
            return ok_reply(request.wire_id, request.op, header, [audio], version=request.version), result
        except ServiceError as exc:
            self.stats.errors[exc.code.value] += 1
            job.outcome = exc.code.value
            log.warning("synthesis failed %s", kv(id=request.id, code=exc.code.value, reason=exc.message))
            return job.error(exc.code, exc.message), None
        except Exception as exc:
            self.stats.errors[ErrorCode.INTERNAL.value] += 1
            job.outcome = ErrorCode.INTERNAL.value
            log.error("synthesis crashed %s\n%s", kv(id=request.id, error=type(exc).__name__), traceback.format_exc())
            return job.error(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"), None

    def _send_now(self, frames: list[Any]) -> str | None:
        """Worker side, for a stream: send at once; None, or why it could not be sent."""
        with self._lock:
            if self._stopped:
                return "daemon stopping"
            sent = self._send(frames)
            # Sending may have consumed the ZMQ_FD signal of a request that arrived meanwhile.
            if self._router is not None and self._router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._poke_reader()
            return None if sent else self._drop_reason


class _Stream:
    """A streamed synthesis's messages (docs/protocol.md, "Streaming"): the engine's AudioSink.

    Every message leaves at once or the stream ends: a client that left cancels it, and one
    that stops reading ends it with ``slow_reader`` once more than ``stream_window_s`` of
    audio is unacknowledged (or ZeroMQ's high-water mark refuses a message), so the daemon
    never holds more than that window for it.
    """

    #: The most samples one audio message carries: bounds each message ZeroMQ queues.
    MAX_MESSAGE_SAMPLES = 24000

    def __init__(self, server: Server, job: _Job) -> None:
        self.server = server
        self.job = job
        params = job.request.params
        assert params is not None
        self.format = params.format
        self.seq = 0
        self.samples = 0
        self.sample_rate = 0
        #: Samples sent by the end of each audio message, by sequence number.
        self._sent_at: list[int] = []
        self.acked = 0  # samples the client said it has read

    def ack(self, seq: int) -> None:
        if 0 <= seq < len(self._sent_at):
            self.acked = max(self.acked, self._sent_at[seq])

    def start(self, sample_rate: int, chunks: list[str]) -> None:
        params = self.job.request.params
        assert params is not None
        self.sample_rate = sample_rate
        payload: dict[str, Any] = {
            "sample_rate": sample_rate, "channels": 1, "format": self.format,
            "chunk_plan": params.chunk_plan or "short_first", "chunks": len(chunks),
            "chunk_chars": [len(chunk) for chunk in chunks],
            "queue_seconds": round(time.monotonic() - self.job.queued_at, 6),
        }
        self._send(stream_message(self.job.request.wire_id, "start", payload))

    def audio(self, samples: Any, chunk: int) -> None:
        for begin in range(0, len(samples), self.MAX_MESSAGE_SAMPLES):
            piece = samples[begin:begin + self.MAX_MESSAGE_SAMPLES]
            unread = (self.samples - self.acked) / self.sample_rate
            if unread > self.server.stream_window_s:
                self._slow(f"the client has not acknowledged {unread:.0f} s of audio (the limit is "
                           f"{self.server.stream_window_s:g} s): read the stream and ack it")
            frames = stream_message(self.job.request.wire_id, "audio",
                                    {"seq": self.seq, "chunk": chunk, "samples": len(piece)},
                                    [encode_audio(piece, self.sample_rate, self.format)])
            self._send(frames)
            if self.job.first_audio_at is None:
                self.job.first_audio_at = time.perf_counter()
            self.seq += 1
            self.samples += len(piece)
            self._sent_at.append(self.samples)

    def end(self, header: dict[str, Any]) -> list[bytes]:
        header["messages"] = self.seq
        if self.job.first_audio_at is not None:
            header["first_audio_seconds"] = round(self.job.first_audio_at - self.job.received_at, 6)
        return stream_message(self.job.request.wire_id, "end", header)

    def _send(self, frames: list[bytes]) -> None:
        why = self.server._send_now(self.job.envelope + frames)
        if why is None:
            return
        if why == "peer_gone":
            cancel = self.job.request.cancel
            if not cancel.cancelled:  # else the gate has seen it go (and counted it) already
                self.server.stats.cancelled["disconnect"] += 1
                cancel.cancel(ErrorCode.CANCELLED, "the client disconnected")
            cancel.check()
        if why == "peer_full":
            self._slow("the client's ZeroMQ queue is full: it stopped reading the stream")
        raise ServiceError(ErrorCode.SHUTTING_DOWN, "daemon is stopping")

    def _slow(self, message: str) -> None:
        self.server.stats.cancelled["slow_reader"] += 1
        raise ServiceError(ErrorCode.SLOW_READER, message)


def synthesis_header(result: SynthesisResult, fmt: str, echo_text: bool = False) -> dict[str, Any]:
    """Reply header fields for an engine SynthesisResult (``text``: what was spoken, on request)."""
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
        "voice": result.voice,
    }
    if echo_text:
        header["text"] = result.text
    return header
