"""NVML, read only: x86 development hosts with an NVIDIA dGPU."""

from __future__ import annotations

import time
from typing import Any, Callable

from ..config import TelemetryConfig
from .sample import TelemetrySample
from .source import SourceUnavailable, TelemetrySource


class NvmlSource(TelemetrySource):
    """Read-only NVML for x86 hosts with an NVIDIA dGPU (development boxes)."""

    name = "nvml"

    def __init__(self, cfg: TelemetryConfig):
        self.cfg = cfg
        self.nvml: Any = None
        self.handle: Any = None

    def open(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise SourceUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
        try:
            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / NotFound
            raise SourceUnavailable(f"NVML: {exc}") from None
        self.nvml = pynvml

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self.nvml = None

    def read(self) -> TelemetrySample:
        n, h = self.nvml, self.handle
        if n is None:
            raise SourceUnavailable("NVML is not initialised")
        sample = TelemetrySample(monotonic=time.monotonic(), wall=time.time(), source=self.name)

        def get(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except n.NVMLError_GpuIsLost as exc:
                raise SourceUnavailable(f"NVML: {exc}") from None
            except n.NVMLError:
                return None

        sample.gpu_cur_mhz = get(lambda: float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_GRAPHICS)))
        sample.gpu_hw_max_mhz = get(lambda: float(n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_GRAPHICS)))
        sample.gpu_load_pct = get(lambda: float(n.nvmlDeviceGetUtilizationRates(h).gpu))
        sample.emc_cur_mhz = get(lambda: float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)))
        temp = get(lambda: float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)))
        sample.temperatures_c = {"gpu": temp} if temp is not None else {}
        sample.power_mw = get(lambda: float(n.nvmlDeviceGetPowerUsage(h)))
        sample.fan_pct = get(lambda: float(n.nvmlDeviceGetFanSpeed(h)))
        reasons = get(lambda: n.nvmlDeviceGetCurrentClocksEventReasons(h)) if hasattr(
            n, "nvmlDeviceGetCurrentClocksEventReasons") else get(lambda: n.nvmlDeviceGetCurrentClocksThrottleReasons(h))
        if reasons:
            sample.throttle = _nvml_reasons(n, reasons)
        return sample


def _nvml_reasons(n: Any, mask: int) -> list[str]:
    table = (
        ("thermal", ("nvmlClocksThrottleReasonSwThermalSlowdown", "nvmlClocksThrottleReasonHwThermalSlowdown")),
        ("power", ("nvmlClocksThrottleReasonSwPowerCap", "nvmlClocksThrottleReasonHwPowerBrakeSlowdown")),
        ("hw_slowdown", ("nvmlClocksThrottleReasonHwSlowdown",)),
    )
    tags = []
    for tag, names in table:
        if any(mask & getattr(n, name, 0) for name in names):
            tags.append(tag)
    return tags

