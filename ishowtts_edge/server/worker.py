"""The synthesis worker's half of the leader/follower pair (core.py says why there are two).

The worker reads the ROUTER itself while it has nothing to synthesize, runs the
synthesis it receives and sends the reply itself, so a request's path crosses no
thread.  Everything here is a method of :class:`Server` (this class is its mixin) and
keeps its lock discipline: the lock is taken to read, to pick a job and to send, and
is never held while synthesizing or sleeping.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import zmq

from ..engine import SynthesisResult
from ..logs import kv
from ..protocol import ErrorCode, ServiceError, encode_audio, ok_reply
from .job import Job, synthesis_header
from .stream import Stream
from .wakeup import sleep_on

log = logging.getLogger(__package__)


class SynthesisWorker:
    """The worker thread's methods of :class:`Server`; the state they use is Server's."""

    #: The idle worker's longest sleep: a safety net, close() and new requests wake it anyway.
    WORKER_IDLE_SECONDS = 1.0

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
                        sleep_on([self._router_fd, self._wake_worker.read_fd], self.WORKER_IDLE_SECONDS)
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

    def _next_job(self) -> Job | None:
        """The next job to run; None (the worker is then the reader) when there is none."""
        with self._lock:
            if self._stopped:
                return None
            self._cancel_gone()  # a waiting job whose client has just left must not be the one taken
            if not self._queue.waiting and self._router is not None:
                if not self._worker_reads:
                    self._worker_reads = True
                    self._wake_loop.poke()  # the serving loop stops watching the socket
                self._read_batch()
            job = self._queue.pop()
            if job is None:
                return None
            if self._worker_reads:
                self._worker_reads = False
                self._wake_loop.poke()  # the serving loop reads while this job runs
            self._running = job
            job.started_at = self.job_started = time.monotonic()
            return job

    def _execute(self, job: Job) -> None:
        try:
            reply, result = self._run(job)
        finally:
            self.job_started = None
        with self._lock:
            self._running = None
            self._queue.release(job.peer)
            if not self._stopped and not job.answered:
                job.answered = True
                self._send_from_worker(job.envelope + reply)
        self._replied(job.request.op, job.outcome, job.received_at, job.queue_seconds, job.first_audio_at)
        if result is not None:
            try:
                self.backend.completed(job.request, result)
            except Exception:
                log.error("completion hook failed\n%s", traceback.format_exc())

    def _run(self, job: Job) -> tuple[list[bytes], SynthesisResult | None]:
        """The reply to send (a stream's end) and, for a synthesis that succeeded, the engine's result."""
        request = job.request
        params = request.params
        assert params is not None
        try:
            request.cancel.check()  # cancelled while it waited
            if job.streamed:
                job.stream = Stream(self, job)
            result = self.backend.synthesize(request, job.stream)
            header = synthesis_header(result, params.format, params.echo_text)
            header["queue_seconds"] = round(job.queue_seconds or 0.0, 6)
            # Receipt to reply built: what the daemon adds to a request, for clients measuring transport.
            header["server_seconds"] = round(time.perf_counter() - job.received_at, 6)
            if job.stream is not None:
                return job.stream.end(header), result
            audio = encode_audio(result.audio, result.sample_rate, params.format)
            return ok_reply(request.wire_id, request.op, header, [audio], version=request.version), result
        except ServiceError as exc:
            self.stats.errors[exc.code.value] += 1
            job.outcome = exc.code.value
            log.log(failure_level(exc.code), "synthesis failed %s",
                    kv(id=request.id, code=exc.code.value, reason=exc.message))
            return job.error(exc.code, exc.message), None
        except Exception as exc:
            self.stats.errors[ErrorCode.INTERNAL.value] += 1
            job.outcome = ErrorCode.INTERNAL.value
            log.error("synthesis crashed %s\n%s", kv(id=request.id, error=type(exc).__name__), traceback.format_exc())
            return job.error(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"), None

    def send_now(self, frames: list[Any]) -> str | None:
        """Worker side, for a stream: send at once; None, or why it could not be sent."""
        with self._lock:
            if self._stopped:
                return "daemon stopping"
            return None if self._send_from_worker(frames) else self._drop_reason

    def _send_from_worker(self, frames: list[Any]) -> bool:
        """:meth:`_send` from the worker (lock held), then wake the reader if a request is waiting.

        Sending may consume the ZMQ_FD signal of a request that arrived meanwhile; the serving
        loop, reading while the worker synthesizes, must not sleep through it.
        """
        sent = self._send(frames)
        if self._router is not None and self._router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._poke_reader()
        return sent


#: Outcomes a client chose or caused (its text, its reference, leaving, not reading) and a stop:
#: info, so that ``journalctl -p warning`` shows only what the daemon or the hardware did wrong.
CLIENT_SIDE = frozenset({
    ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_VOICE, ErrorCode.BAD_REFERENCE, ErrorCode.TEXT_TOO_LONG,
    ErrorCode.CANCELLED, ErrorCode.SLOW_READER, ErrorCode.SHUTTING_DOWN,
})


def failure_level(code: ErrorCode) -> int:
    return logging.INFO if code in CLIENT_SIDE else logging.WARNING
