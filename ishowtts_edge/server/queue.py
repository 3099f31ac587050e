"""The fair queue: synthesis requests waiting for the worker, and who may add one.

One bounded queue per peer and priority, served round-robin, ``interactive`` before
``bulk`` but bulk never starved (docs/protocol.md, "Queueing and fairness").  A full
queue makes room for a peer holding less of it rather than refusing everyone alike.

It has no lock of its own: every call is made under the server's lock.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque

from ..protocol import PRIORITIES, ErrorCode, ServiceError
from .job import Job


class FairQueue:
    #: When both priorities wait, every BULK_EVERY-th pick is a bulk request.
    BULK_EVERY = 4

    def __init__(self, max_queue: int, max_queue_per_client: int) -> None:
        #: Synthesis requests waiting behind the running one, all peers together.
        self.max_queue = max_queue
        #: Synthesis requests one peer may have waiting or running.
        self.max_queue_per_client = max_queue_per_client
        #: Waiting jobs: per priority, per peer (round-robin: a served peer moves to the back).
        self._queues: dict[str, OrderedDict[bytes, deque[Job]]] = {p: OrderedDict() for p in PRIORITIES}
        self.waiting = 0
        self._per_peer: Counter[bytes] = Counter()  # waiting + running, by peer
        self._bulk_passed = 0  # interactive picks in a row while bulk work waited

    def admit(self, job: Job, pending: int) -> Job | None:
        """Queue ``job`` or raise ``busy`` (``pending``: requests waiting or running, for its message).
        A full queue makes room for a peer with less waiting (or for interactive work) by taking
        out the newest job of the peer holding the most: returned, for the caller to answer ``busy``."""
        peer = job.peer
        if self._per_peer[peer] >= self.max_queue_per_client:
            raise ServiceError(ErrorCode.BUSY, f"this client has {self._per_peer[peer]} requests queued or running; "
                               "wait for a reply, then retry", request_id=job.request.wire_id)
        displaced = None
        if self.waiting >= self.max_queue:
            victim = self._displaceable(job)
            if victim is None:
                raise ServiceError(ErrorCode.BUSY, f"{pending} requests already queued or running; retry later",
                                   request_id=job.request.wire_id)
            displaced = self._remove_newest(victim)
        self._queues[job.priority].setdefault(peer, deque()).append(job)
        self.waiting += 1
        self._per_peer[peer] += 1
        return displaced

    def _displaceable(self, job: Job) -> tuple[str, bytes] | None:
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

    def _remove_newest(self, where: tuple[str, bytes]) -> Job:
        level, peer = where
        jobs = self._queues[level][peer]
        victim = jobs.pop()
        if not jobs:
            del self._queues[level][peer]
        self.waiting -= 1
        self.release(peer)
        return victim

    def release(self, peer: bytes) -> None:
        """One job of ``peer`` is no longer waiting or running."""
        self._per_peer[peer] -= 1
        if self._per_peer[peer] <= 0:
            del self._per_peer[peer]

    def pop(self) -> Job | None:
        """The next job: round-robin over peers, interactive first, bulk every BULK_EVERY-th pick.
        It still counts for its peer until :meth:`release`."""
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
        self.waiting -= 1
        return job

    def take_all(self) -> list[Job]:
        jobs = []
        while (job := self.pop()) is not None:
            self.release(job.peer)
            jobs.append(job)
        return jobs

    def jobs(self) -> list[Job]:
        """Every waiting job."""
        return [job for queue in self._queues.values() for jobs in queue.values() for job in jobs]

    def remove(self, job: Job) -> None:
        """Take a waiting ``job`` out (it was cancelled)."""
        queue = self._queues[job.priority]
        jobs = queue[job.peer]
        jobs.remove(job)
        if not jobs:
            del queue[job.peer]
        self.waiting -= 1
        self.release(job.peer)
