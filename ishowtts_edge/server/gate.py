"""The connection gate: the ROUTER's connections counted, capped, and their ends reported.

libzmq aborts the process when an ipc accept fails with EMFILE, so the number of client
connections must stay below the descriptor limit.  A side thread watches the ROUTER's
socket monitor and shuts every connection above the cap as it arrives; it also tells
the server when a connection ends, so the requests of a client that left are cancelled.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
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
        self._log_refused = RateLimitedLog()
        self._thread = threading.Thread(target=self._run, name="connection-gate", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def connection(self, fd: int) -> tuple[int, int] | None:
        """(descriptor, generation) of the connection a message just read came from; None when that
        connection has already ended or was refused (its messages can still be read after that:
        any reply to them goes to nobody).  A descriptor the gate never saw is taken as open."""
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
            if not same_endpoint(sock.getsockname(), self._endpoint):
                return False
            sock.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            return False
        finally:
            sock.detach()  # the descriptor stays libzmq's: it closes it when it drops the connection


def same_endpoint(name: Any, endpoint: str) -> bool:
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
