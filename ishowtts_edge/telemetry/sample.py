"""One telemetry reading, and the buffer of recent ones that every reader shares."""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import TelemetryConfig


@dataclass
class TelemetrySample:
    """One reading.  ``None`` means the source could not tell, never a guess."""

    monotonic: float  # time.monotonic() when read, to pair with syntheses
    wall: float  # time.time()
    source: str  # "jtop" | "sysfs" | "nvml"
    gpu_cur_mhz: float | None = None
    gpu_min_mhz: float | None = None
    gpu_max_mhz: float | None = None
    #: The highest frequency the GPU may reach (hardware limit), to tell a lowered cap from a locked max.
    gpu_hw_max_mhz: float | None = None
    gpu_load_pct: float | None = None
    cpu_cur_mhz: list[float] = field(default_factory=list)
    emc_cur_mhz: float | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict)  # online zones only
    power_mw: float | None = None
    fan_pct: float | None = None
    nvpmodel_id: int | None = None
    nvpmodel_name: str | None = None
    jetson_clocks: bool | None = None
    #: Named throttle indications, e.g. "oc1" (over-current events rose), "thermal".
    throttle: list[str] = field(default_factory=list)

    @property
    def hottest(self) -> tuple[str, float] | None:
        if not self.temperatures_c:
            return None
        name = max(self.temperatures_c, key=self.temperatures_c.__getitem__)
        return name, self.temperatures_c[name]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        hottest = self.hottest
        data["hottest"] = {"zone": hottest[0], "c": hottest[1]} if hottest else None
        return data


class TelemetryBuffer:
    """The recent samples, oldest first: the one record of what the board was.

    The sampler appends to it; the RTF monitor asks it which sample describes the moment a
    synthesis ran (:meth:`nearest`), and the sampler's own readers take the newest from it.
    Thread-safe: the sampler thread writes while the synthesis and front-end threads read.
    """

    def __init__(self, size: int, within_s: float) -> None:
        #: How far, in seconds, the sample :meth:`nearest` returns may lie from the time asked
        #: (``telemetry.nearest_within_s``): farther, it does not describe that moment.
        self.within_s = within_s
        self._samples: deque[TelemetrySample] = deque(maxlen=size)
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, cfg: TelemetryConfig) -> "TelemetryBuffer":
        """Room for ``buffer_s`` seconds of samples ``interval_s`` apart (at least five)."""
        return cls(max(5, int(cfg.buffer_s / cfg.interval_s) + 1), cfg.nearest_within_s)

    def append(self, sample: TelemetrySample) -> None:
        with self._lock:
            self._samples.append(sample)

    def newest(self) -> TelemetrySample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def samples(self) -> list[TelemetrySample]:
        with self._lock:
            return list(self._samples)

    def nearest(self, monotonic_t: float, max_gap_s: float | None = None) -> TelemetrySample | None:
        """The sample closest in time to ``monotonic_t``; None if none lies within
        ``max_gap_s`` of it (default :attr:`within_s`)."""
        gap = max_gap_s if max_gap_s is not None else self.within_s
        samples = self.samples()
        if not samples:
            return None
        times = [s.monotonic for s in samples]
        index = bisect.bisect_left(times, monotonic_t)
        candidates = [samples[i] for i in (index - 1, index) if 0 <= i < len(samples)]
        best = min(candidates, key=lambda s: abs(s.monotonic - monotonic_t))
        return best if abs(best.monotonic - monotonic_t) <= gap else None
