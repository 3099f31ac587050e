"""What the board should look like, and which cause a deviation from it points to.

The detector sees only that syntheses got slower; telemetry says why.  This module holds
what the board is expected to be (the power mode applied, the clock locked at its
maximum when the daemon manages clocks, below the hot threshold) and turns samples that
differ into a cause: power_mode_changed, clocks_off, thermal_throttle, clock_drift or
unknown.  Each check answers None when the sample cannot tell.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..config import MonitorConfig, TelemetryConfig
from ..telemetry import TelemetrySample

#: Causes in the order they are preferred when several apply: a changed power mode
#: explains clocks being off, clocks being off explains a low clock, and so on.
CAUSES = ("power_mode_changed", "clocks_off", "thermal_throttle", "clock_drift", "unknown")

Mode = tuple[int | None, str | None]


class HardwareExpectations:
    """The expected power mode and locked clock, learned from the first samples unless told.

    Not thread-safe on its own: the detector calls it under its lock.
    """

    def __init__(self, cfg: MonitorConfig, *, expect_clocks_locked: bool = True, hot_c: float | None = None) -> None:
        self.cfg = cfg
        #: Hot, deg C: ``telemetry.hot_tj_c``, the figure the sampler's "thermal" tag uses too.
        self.hot_c = hot_c if hot_c is not None else TelemetryConfig.model_fields["hot_tj_c"].default
        #: False when the daemon leaves clocks to the governor: then clocks off and a low
        #: clock are normal, not faults.
        self.expect_clocks_locked = expect_clocks_locked
        self.expected_mode: Mode | None = None
        self.locked_max_mhz: float | None = None

    def learn(self, sample: TelemetrySample) -> None:
        """Without being told, expect the first power mode seen and the first locked maximum."""
        if self.expected_mode is None and (sample.nvpmodel_id is not None or sample.nvpmodel_name):
            self.expected_mode = (sample.nvpmodel_id, sample.nvpmodel_name)
        if self.locked_max_mhz is None and sample.jetson_clocks and sample.gpu_max_mhz:
            self.locked_max_mhz = float(sample.gpu_max_mhz)

    def clocks_off(self, tele: TelemetrySample) -> bool | None:
        if not self.expect_clocks_locked or tele.jetson_clocks is None:
            return None
        return not tele.jetson_clocks

    def mode_changed(self, tele: TelemetrySample) -> bool | None:
        if self.expected_mode is None:
            return None
        want_id, want_name = self.expected_mode
        if want_id is not None and tele.nvpmodel_id is not None:
            return tele.nvpmodel_id != want_id
        if want_name and tele.nvpmodel_name:
            return tele.nvpmodel_name.lower() != want_name.lower()
        return None

    def reference_max(self, tele: TelemetrySample) -> float | None:
        return self.locked_max_mhz or tele.gpu_max_mhz or tele.gpu_hw_max_mhz

    def clock_low(self, tele: TelemetrySample) -> bool | None:
        ref = self.reference_max(tele)
        if tele.gpu_cur_mhz is None or not ref:
            return None
        return tele.gpu_cur_mhz < ref * (1.0 - self.cfg.clock_drop_threshold)

    def hot(self, tele: TelemetrySample) -> bool:
        """Thermal or over-current evidence.  "gpu_below_min" alone is not: a clock that merely
        fell below its locked minimum is what clock_drift means."""
        hottest = tele.hottest
        flags = [f for f in tele.throttle if f != "gpu_below_min"]
        return bool(flags) or (hottest is not None and hottest[1] >= self.hot_c)

    def healthy(self, tele: TelemetrySample) -> bool | None:
        """Clocks locked at their maximum in the expected power mode?  None when it cannot tell."""
        verdicts = [self.clocks_off(tele), self.mode_changed(tele), self.clock_low(tele)]
        if any(v is True for v in verdicts):
            return False
        if all(v is None for v in verdicts):
            return None
        return True

    def fit_to_learn(self, tele: TelemetrySample) -> bool:
        """Whether a request timed under this sample may teach the baseline."""
        if tele.throttle:
            return False
        if self.clocks_off(tele) or self.mode_changed(tele):
            return False
        # With clocks deliberately left to the governor, a low clock is normal, not a fault.
        return not (self.expect_clocks_locked and self.clock_low(tele))

    def attribute(self, samples: Sequence[TelemetrySample]) -> str:
        """Most specific cause that at least half of these samples support."""
        if not samples:
            return "unknown"

        def share(test: Callable[[TelemetrySample], bool | None]) -> float:
            votes = [test(t) for t in samples]
            known = [v for v in votes if v is not None]
            return sum(known) / len(known) if known else 0.0

        checks: dict[str, Callable[[TelemetrySample], bool | None]] = {
            "power_mode_changed": self.mode_changed,
            "clocks_off": self.clocks_off,
            "thermal_throttle": lambda t: (self.clock_low(t) is True) and self.hot(t),
            "clock_drift": self.clock_low,
        }
        for cause, test in checks.items():
            if share(test) >= 0.5:
                return cause
        return "unknown"

    def figures(self, tele: TelemetrySample) -> dict[str, Any]:
        """The telemetry an alert carries: what the board was and what it should be."""
        hottest = tele.hottest
        return {
            "gpu_cur_mhz": tele.gpu_cur_mhz,
            "gpu_max_mhz": self.reference_max(tele),
            "jetson_clocks": tele.jetson_clocks,
            "nvpmodel": tele.nvpmodel_name if tele.nvpmodel_name is not None else tele.nvpmodel_id,
            "expected_nvpmodel": _mode_label(self.expected_mode),
            "hottest_zone": hottest[0] if hottest else None,
            "temp_c": hottest[1] if hottest else None,
            "throttle": ",".join(tele.throttle) if tele.throttle else None,
        }

    def status(self) -> dict[str, Any]:
        mode = self.expected_mode
        return {
            "expected_power_mode": None if mode is None else {"id": mode[0], "name": mode[1]},
            "locked_gpu_max_mhz": self.locked_max_mhz,
        }


def telemetry_brief(t: TelemetrySample) -> dict[str, Any]:
    """The last sample as ``status`` shows it."""
    hottest = t.hottest
    return {
        "monotonic": t.monotonic,
        "source": t.source,
        "gpu_cur_mhz": t.gpu_cur_mhz,
        "gpu_max_mhz": t.gpu_max_mhz,
        "jetson_clocks": t.jetson_clocks,
        "nvpmodel": t.nvpmodel_name,
        "hottest": {"zone": hottest[0], "c": hottest[1]} if hottest else None,
        "throttle": list(t.throttle),
    }


def _mode_label(mode: Mode | None) -> Any:
    if mode is None:
        return None
    return mode[1] if mode[1] is not None else mode[0]
