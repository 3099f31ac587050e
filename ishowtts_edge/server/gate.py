"""The connection gate: the ROUTER's connections counted, capped, and their ends reported.

libzmq aborts the process when an ipc accept fails with EMFILE, so the number of client
connections must stay below the descriptor limit.  A side thread watches the ROUTER's
socket monitor and shuts every connection above the cap as it arrives; it also tells
the server when a connection ends, so the requests of a client that left are cancelled.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import socket
import struct
import threading
from typing import Any, Callable

import zmq

from ..endpoints import ipc_path
from ..logs import kv
from .stats import RateLimitedLog, ServerStats
from .wakeup import sleep_on

log = logging.getLogger(__package__)


class ConnectionGate:
    """Counts the ROUTER's connections, shuts every new one above the cap at once, and reports
    the ones that end (the requests of a client that left are cancelled: see cancel.py).

    libzmq reports each accepted connection with its descriptor (the socket monitor's
    ACCEPTED event); shutting that descriptor down makes libzmq drop the connection
    (DISCONNECTED) while the listener and every other connection stay as they are.
    Unbinding would not do: it closes the connections accepted on the endpoint too.
    A refused client's ZeroMQ socket reconnects by itself and gets in once a connection
    closes.  Runs on its own thread so it keeps up with a burst of connections while
    the worker synthesizes; it never touches the ROUTER itself.

    A burst of connections can outrun the thread: libzmq accepts in C while each event
    costs the thread some microseconds of Python, and every connection accepted and not
    yet shut holds a descriptor.  How far it can run ahead is bounded by the monitor's
    pipe (:func:`open_monitor`): libzmq 4.3 does not drop a monitor event when the pipe is
    full, its I/O thread waits for the gate to read, and accepts nothing meanwhile.

    A message names its connection by descriptor (ZMQ_SRCFD), and descriptors are reused.
    Each ACCEPTED on a descriptor starts a new generation of it; libzmq queues a
    connection's ACCEPTED (and the previous one's DISCONNECTED) on the monitor before any of
    its messages can be read, so :meth:`connection`, which reads the monitor first, names
    the right one.
    """

    #: MONITOR_STOPPED, the last event, tells the thread that libzmq will send no more (see close()).
    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED
    _ACCEPTED, _DISCONNECTED, _STOPPED = int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_DISCONNECTED), \
        int(zmq.EVENT_MONITOR_STOPPED)

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
        self._log_refused = RateLimitedLog()
        self._thread = threading.Thread(target=self._run, name="connection-gate", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Call after closing the ROUTER: libzmq then stops its monitor with MONITOR_STOPPED.

        The thread reads events until that one, because libzmq waits for ever on a full
        monitor pipe that nobody reads (holding the ROUTER's monitor lock meanwhile, so
        nothing may stop the monitor from a thread that holds the GIL either: pyzmq's
        ``disable_monitor`` would deadlock).  Past ``timeout_s`` it stops anyway.
        """
        self._thread.join(timeout=timeout_s)
        self._stop.set()
        self._thread.join(timeout=1.0)

    def connection(self, fd: int) -> tuple[int, int] | None:
        """(descriptor, generation) of the connection a message just read came from; None when that
        connection has already ended or was refused (its messages can still be read after that:
        any reply to them goes to nobody).  A descriptor the gate never saw is taken as open.

        A message names only its descriptor: one read after a new connection took the descriptor
        of its ended one is taken for the new connection's (the reader is usually far quicker).
        """
        self._drain()
        with self._lock:
            if fd in self._generation and fd not in self._open:
                return None
            return fd, self._generation.get(fd, 0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                sleep_on([self._monitor_fd], 0.2)
                if not self._drain():
                    return
        finally:
            with self._lock:
                self._closed = True
                self._monitor.close(linger=0)

    def _drain(self) -> bool:
        """Handle every event queued now; False once the monitor has stopped.

        Each event is parsed here (a 16-bit event and a 32-bit value, libzmq's version 1
        monitor format) rather than by pyzmq's ``recv_monitor_message``, which costs three
        times as much per event: the gate's speed decides how far a burst gets ahead of it.
        """
        with self._lock:
            if self._closed:
                return False
            try:
                while True:
                    try:
                        frames = self._monitor.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        return True
                    event, value = struct.unpack_from("=Hi", frames[0])
                    if event == self._STOPPED:
                        return False
                    self._on_event(event, value)
            except zmq.ZMQError as exc:  # the context is being torn down
                log.debug("connection gate ended %s", kv(reason=exc.strerror))
                return False

    def _on_event(self, event: int, fd: int) -> None:
        if event == self._DISCONNECTED:
            if fd in self._refused:
                self._refused.discard(fd)
            else:
                self._open.discard(fd)
                if self._on_disconnect is not None:
                    self._on_disconnect(fd, self._generation.get(fd, 0))
        elif event == self._ACCEPTED:
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
            if not same_endpoint(sock.getsockname(), self._endpoint):
                return False
            sock.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            return False
        finally:
            sock.detach()  # the descriptor stays libzmq's: it closes it when it drops the connection


_MONITOR_NUMBERS = itertools.count(1)


def open_monitor(router: zmq.Socket) -> zmq.Socket:
    """The gate's end of ``router``'s socket monitor; call it before bind, so no connection is missed.

    The pipe is as short as libzmq allows: its own end holds 1000 events and this one 1.  A
    full pipe makes libzmq's I/O thread wait for the gate instead of accepting more, so a
    burst gets at most about a thousand connections ahead of the gate (BURST_DESCRIPTORS:
    what they can hold), and the daemon's ZeroMQ traffic pauses only while the gate catches
    up, milliseconds.
    """
    # A counter, not id(router): a closed router's inproc address lives on until libzmq's reaper
    # is done with it, and a new router may get the old one's id in the meantime.
    address = f"inproc://ishowtts-edge-gate-{next(_MONITOR_NUMBERS)}"
    router.monitor(address, ConnectionGate.EVENTS)
    monitor = router.context.socket(zmq.PAIR)
    monitor.setsockopt(zmq.RCVHWM, 1)
    monitor.connect(address)
    return monitor


def same_endpoint(name: Any, endpoint: str) -> bool:
    """Whether an accepted socket's local address is ``endpoint`` (guards against a reused descriptor)."""
    if endpoint.startswith("ipc://"):
        path = ipc_path(endpoint)
        want = str(path) if path is not None else "\0" + endpoint[len("ipc://@"):]  # "@name": abstract namespace
        return isinstance(name, (str, bytes)) and os.fsdecode(name) == want
    if isinstance(name, tuple) and len(name) >= 2:
        return endpoint.rsplit(":", 1)[-1] in (str(name[1]), "*")
    return False


#: Descriptors a burst of connections can hold beyond the cap at worst: what the monitor's pipe
#: holds (open_monitor: about a thousand accepted and not yet seen) and as many already shut
#: whose ends libzmq has not yet closed.  With fewer spare, a fast enough burst can still make
#: an ipc accept fail with EMFILE, which aborts the process.
BURST_DESCRIPTORS = 2000


def descriptors_free() -> int | None:
    """Descriptors this process may still open (None: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    return soft - in_use


def connection_cap(configured: int, free: int | None) -> int:
    """``configured``, or less when the ``free`` descriptors leave no room for that many and a margin.

    Half of the descriptors still free at bind go to clients: the other half is for what
    the engine opens later and for connections accepted before the gate shuts them.
    """
    return configured if free is None else max(1, min(configured, free // 2))
