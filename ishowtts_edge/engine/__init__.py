"""The F5-TTS engine.

The daemon uses exactly this surface (:mod:`.loader`, :mod:`.core`, :mod:`.warmup`)::

    engine = load_engine(settings, progress)  # model + vocoder + sampler + voices, all or EngineLoadError
    report = engine.warmup(progress)          # compile and run every shape bucket -> WarmupReport
    result = engine.synthesize(params, ref)   # SynthesizeParams, reference bytes or None -> SynthesisResult
    engine.synthesize(params, ref, sink=s)    # the same, handing each final piece of audio to s as it exists
    engine.voices()                           # [{"id", "ref_text", "ref_seconds", "source"}]
    engine.reload_voices(settings)            # SIGHUP: re-read voices, keep the model
    engine.describe()                         # {"device", "dtype", "model", "compiled", "demo", ...}

``load_engine`` comes from :mod:`.loader`, whose import brings in torch; this module
does not.  ``progress(message)`` is called at least every few seconds during load and warm-up
(from a helper thread while one long step such as a compile runs) so the daemon can
extend systemd's start timeout.  Request problems raise
:class:`ishowtts_edge.protocol.ServiceError` with a stable code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32, mono, [-1, 1]
    sample_rate: int
    synthesis_seconds: float
    mel_frames: int
    nfe_step: int
    chunks: int = 1
    seed: int | None = None  # the noise seed used (drawn at random when the request gave none)
    voice_seconds: float = 0.0  # looking up / preparing the voice; not part of synthesis_seconds
    #: Frames the transformer ran on, summed over chunks: reference + generated, padded to the
    #: length bucket.  What a step costs follows this, not mel_frames (the RTF monitor's size).
    model_frames: int | None = None
    #: The text as spoken: the request's text after the text front end (ishowtts_edge.text).
    text: str = ""
    #: The configured voice spoken with; None for an ad-hoc reference sent with the request.
    voice: str | None = None
    #: Engine seconds until the first piece of audio was final (a streamed request's first audio).
    first_audio_seconds: float | None = None

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        return self.synthesis_seconds / self.audio_seconds if self.audio_seconds > 0 else float("inf")


class AudioSink(Protocol):
    """Where a streamed synthesis goes, piece by piece (the server sends each on at once).

    Time spent in these calls is the client's side and not counted in synthesis_seconds;
    a ServiceError raised here (the client left, stopped reading) ends the synthesis.
    """

    def start(self, sample_rate: int, chunks: list[str]) -> None:
        """The plan, before any model work."""

    def audio(self, samples: np.ndarray, chunk: int) -> None:
        """Final float32 samples, in order; ``chunk`` is the plan's index they came from."""


@dataclass
class WarmupReport:
    seconds: float
    shapes: list[int] = field(default_factory=list)  # mel-frame buckets run
    compiled: bool = False
    error: str | None = None  # compile failed: fell back to eager


class EngineLoadError(RuntimeError):
    """The model, vocoder or a voice could not be loaded; the message says which file and why."""
