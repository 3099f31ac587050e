"""What every telemetry source (jtop, sysfs, NVML) is to the sampler."""

from __future__ import annotations

from .sample import TelemetrySample


class SourceUnavailable(Exception):
    """This source cannot deliver now (absent, unreachable, died); the message says why."""


class TelemetrySource:
    name = "?"

    def open(self) -> None:
        """Connect or probe; raise SourceUnavailable with the reason."""

    def read(self) -> TelemetrySample:
        raise NotImplementedError

    def close(self) -> None:
        pass
