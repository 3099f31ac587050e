"""A streamed synthesis's messages (start, audio, end), its acknowledgements and back-pressure.

Runs on the worker thread, inside the synthesis: each message goes out at once through
:meth:`Server.send_now` (under the server's lock, never waiting for the client).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..protocol import ErrorCode, ServiceError, encode_audio, stream_message
from .job import Job

if TYPE_CHECKING:
    from .core import Server


class Stream:
    """A streamed synthesis's messages (docs/protocol.md, "Streaming"): the engine's AudioSink.

    Every message leaves at once or the stream ends: a client that left cancels it, and one
    that stops reading ends it with ``slow_reader`` once more than ``stream_window_s`` of
    audio is unacknowledged (or ZeroMQ's high-water mark refuses a message), so the daemon
    never holds more than that window for it.
    """

    #: The most samples one audio message carries: bounds each message ZeroMQ queues.
    MAX_MESSAGE_SAMPLES = 24000

    def __init__(self, server: Server, job: Job) -> None:
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
            "queue_seconds": round(self.job.queue_seconds or 0.0, 6),
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
        why = self.server.send_now(self.job.envelope + frames)
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

