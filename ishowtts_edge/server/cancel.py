"""Cancellation: a ``cancel`` request, a client that left, and stream acks.

A cancelled job that still waits is taken out of the queue; the running one has its
request's cancel token set, and the synthesis stops at its next step (the worker then
answers it).  A client that left (its connection ended: a REQ socket closed, a
stream abandoned, a process gone) cancels every synthesis request it has waiting or
running, one-reply or streamed alike, since any reply would go to nobody.  These are
methods of :class:`Server` (this class is its mixin), called with its lock held, except
:meth:`_disconnected`, which runs on the connection gate's thread and only hands the
event to the serving loop.
"""

from __future__ import annotations

import logging

from ..logs import kv
from ..protocol import ErrorCode, Request, ok_reply
from ..protocol import peer_repr as peer_id
from .job import Job

log = logging.getLogger(__package__)


class CancelOps:
    """The cancellation methods of :class:`Server`; the state they use is Server's."""

    def _disconnected(self, fd: int, generation: int) -> None:
        """The gate's thread: a connection ended.  The reader or the worker cancels its requests."""
        self._gone.append((fd, generation))
        self._wake_loop.poke()

    def _cancel_gone(self) -> None:
        """Requests of connections that ended: a waiting one is dropped, the running one cancelled."""
        while self._gone:
            gone = self._gone.popleft()
            for job in self._queue.jobs():
                if job.connection == gone:
                    self._queue.remove(job)
                    self._drop_gone(job, "queued")
            running = self._running
            if running is not None and running.connection == gone and not running.request.cancel.cancelled:
                running.request.cancel.cancel(ErrorCode.CANCELLED, "the client disconnected")
                self.stats.cancelled["disconnect"] += 1
                log.info("request cancelled %s", kv(id=running.request.id, by="disconnect", was="running"))

    def _drop_gone(self, job: Job, was: str) -> None:
        """A job whose client has left, before it ran: never run, never answered (nobody would read
        it), but counted like a running one cancelled by the disconnect (stats, errors, metrics)."""
        self.stats.cancelled["disconnect"] += 1
        self.stats.errors[ErrorCode.CANCELLED.value] += 1
        log.info("request cancelled %s", kv(id=job.request.id, by="disconnect", was=was))
        self._replied("synthesize", ErrorCode.CANCELLED.value, job.received_at)

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
            for job in self._queue.jobs():
                if job.peer == peer and job.request.wire_id == request.target:
                    self._queue.remove(job)
                    self.stats.cancelled["op"] += 1
                    self._answer_waiting(job, ErrorCode.CANCELLED, "cancelled by the client before it ran")
                    was = "queued"
                    break
        if was is not None:
            log.info("request cancelled %s", kv(id=peer_id(request.target), by="cancel", was=was))
        self._send(envelope + ok_reply(request.wire_id, "cancel", {"cancelled": was is not None, "was": was},
                                       version=request.version))
        self._replied("cancel", "ok", received_at)
