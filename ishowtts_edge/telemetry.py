"""Hardware telemetry: clocks, thermals, power, from jtop, sysfs or NVML.

Only the sample type lives here so far; the sampler and its sources come with the
hardware issue.  The RTF monitor and ``status`` read these fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
