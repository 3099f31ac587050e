"""A synthesis request's life inside the server: the Job that carries it, and its reply header.

A job is created when a synthesize request is admitted, waits in the fair queue, runs
on the worker and is answered exactly once (by the worker, or at stop by the stopping
thread); what it needs for that travels with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine import SynthesisResult
from ..protocol import PRIORITIES, ErrorCode, Request, error_reply

if TYPE_CHECKING:
    from .stream import Stream


@dataclass
class Job:
    envelope: list[bytes]
    request: Request
    #: perf_counter when the ROUTER handed us the request (before parsing): server_seconds starts here.
    received_at: float
    #: monotonic at admission (the job is made just before it is queued).
    queued_at: float = field(default_factory=time.monotonic)
    #: monotonic when the worker took it; None while it waits.
    started_at: float | None = None
    #: "ok" or the error code the synthesis was answered with.
    outcome: str = "ok"
    #: Set (under the server's lock) once its client has had a reply: at stop, a synthesis that
    #: does not reach its next step in time is answered by the stopping thread instead.
    answered: bool = False
    #: The connection it came on: (descriptor, the gate's count of connections accepted on it).
    connection: tuple[int, int] | None = None
    #: perf_counter when a stream's first audio message left.
    first_audio_at: float | None = None
    stream: "Stream | None" = None

    @property
    def queue_seconds(self) -> float | None:
        """Admission to the worker taking it: the one figure a stream's start and end, a one-reply
        header and the metrics all report, so they agree.  None for a job that never ran."""
        return None if self.started_at is None else self.started_at - self.queued_at

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
