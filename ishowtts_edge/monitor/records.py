"""One synthesis as the monitor sees it: its size, its time and the telemetry around it.

Kept apart so the simulator and the tests can build records without the detector, and
so a record is checked (validate) before it can poison the window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..telemetry import TelemetrySample
from .stats import finite

if TYPE_CHECKING:
    from ..engine import SynthesisResult


@dataclass
class SynthesisRecord:
    """One synthesis as the monitor sees it, with the telemetry sample nearest in time."""

    request_id: str
    monotonic: float  # time.monotonic() when the synthesis finished
    wall: float  # time.time() at the same moment
    audio_seconds: float
    synthesis_seconds: float
    mel_frames: int
    nfe_step: int
    chunks: int = 1
    telemetry: TelemetrySample | None = None
    #: Frames the transformer ran on (reference + generated, padded; engine's model_frames).
    #: The size the baseline uses when known: generated frames alone leave out the
    #: reference, whose cost also grows with the step count.
    model_frames: int | None = None

    @property
    def work_frames(self) -> int:
        return self.model_frames or self.mel_frames

    @classmethod
    def from_result(
        cls,
        result: "SynthesisResult",
        *,
        request_id: str = "",
        telemetry: TelemetrySample | None = None,
        monotonic: float | None = None,
        wall: float | None = None,
    ) -> "SynthesisRecord":
        return cls(
            request_id=request_id,
            monotonic=time.monotonic() if monotonic is None else monotonic,
            wall=time.time() if wall is None else wall,
            audio_seconds=float(result.audio_seconds),
            synthesis_seconds=float(result.synthesis_seconds),
            mel_frames=int(result.mel_frames),
            nfe_step=int(result.nfe_step),
            chunks=int(getattr(result, "chunks", 1) or 1),
            telemetry=telemetry,
            model_frames=getattr(result, "model_frames", None),
        )

    @property
    def rtf(self) -> float:
        return self.synthesis_seconds / self.audio_seconds

    @property
    def fit_point(self) -> tuple[float, int, float]:
        """(frames per chunk, nfe, seconds per chunk): what Baseline.fit takes."""
        return self.work_frames / self.chunks, self.nfe_step, self.synthesis_seconds / self.chunks

    def validate(self) -> None:
        """Raise ValueError naming the bad field: one broken record must not poison the window."""
        for name in ("audio_seconds", "synthesis_seconds", "monotonic", "wall"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"synthesis record {self.request_id!r}: {name}={value!r} is not a finite number")
        if self.audio_seconds <= 0:
            raise ValueError(f"synthesis record {self.request_id!r}: audio_seconds={self.audio_seconds} must be > 0")
        if self.synthesis_seconds <= 0:
            raise ValueError(
                f"synthesis record {self.request_id!r}: synthesis_seconds={self.synthesis_seconds} must be > 0"
            )
        for name in ("mel_frames", "nfe_step", "chunks", "model_frames"):
            value = getattr(self, name)
            if name == "model_frames" and value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"synthesis record {self.request_id!r}: {name}={value!r} must be an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        tele = self.telemetry
        hottest = tele.hottest if tele else None
        return {
            "request_id": self.request_id,
            "wall": self.wall,
            "audio_seconds": finite(self.audio_seconds),
            "synthesis_seconds": finite(self.synthesis_seconds),
            "rtf": finite(self.rtf),
            "mel_frames": self.mel_frames,
            "model_frames": self.model_frames,
            "nfe_step": self.nfe_step,
            "chunks": self.chunks,
            "gpu_cur_mhz": tele.gpu_cur_mhz if tele else None,
            "gpu_max_mhz": tele.gpu_max_mhz if tele else None,
            "hottest": {"zone": hottest[0], "c": hottest[1]} if hottest else None,
            "jetson_clocks": tele.jetson_clocks if tele else None,
            "nvpmodel": tele.nvpmodel_name if tele else None,
        }
