"""Cancellation: a ``cancel`` request, a streaming client that left, and stream acks.

A cancelled job that still waits is taken out of the queue; the running one has its
request's cancel token set, and the synthesis stops at its next step (the worker then
answers it).  These are methods of :class:`Server` (this class is its mixin), called
with its lock held, except :meth:`_disconnected`, which runs on the connection gate's
thread and only hands the event to the serving loop.
"""

from __future__ import annotations

import logging

from ..logs import kv
from ..protocol import ErrorCode, Request, ok_reply
from ..protocol import peer_repr as peer_id

log = logging.getLogger(__package__)


class CancelOps:
    """The cancellation methods of :class:`Server`; the state they use is Server's."""

    def _disconnected(self, fd: int, generation: int) -> None:
        """The gate's thread: a connection ended.  The serving loop cancels its streams."""
        self._gone.append((fd, generation))
        self._wake_loop.poke()

    def _cancel_gone(self) -> None:
        """Streams of connections that ended: a waiting one is dropped, the running one cancelled."""
        while self._gone:
            gone = self._gone.popleft()
            for job in self._queue.jobs():
                if job.connection == gone:
                    self._queue.remove(job)
                    self.stats.cancelled["disconnect"] += 1
                    log.info("stream cancelled %s", kv(id=job.request.id, why="client gone", was="queued"))
            running = self._running
            if running is not None and running.connection == gone and not running.request.cancel.cancelled:
                running.request.cancel.cancel(ErrorCode.CANCELLED, "the client disconnected")
                self.stats.cancelled["disconnect"] += 1
                log.info("stream cancelled %s", kv(id=running.request.id, why="client gone", was="running"))

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
