"""Hardware telemetry: clocks, thermals, power, from jtop, sysfs or NVML.

One background thread (:class:`TelemetrySampler`) reads the first working source in
``cfg.sources`` every ``interval_s`` into one :class:`TelemetryBuffer`, so the RTF monitor
can ask what the clocks were while a synthesis ran (:meth:`TelemetryBuffer.nearest`).  A
source that fails is closed and retried with backoff while the next one takes over; every
switch is logged and shown in :meth:`TelemetrySampler.status`.  With no working source
nothing is invented: ``latest()`` is None and status says why.

One module per job, as jetson-stats' ``core/`` has one per reading:

- ``sample``: :class:`TelemetrySample`, one reading, and :class:`TelemetryBuffer`, the recent ones.
- ``source``: what every source is to the sampler, and :class:`SourceUnavailable`.
- ``sysfs``: the Jetson sysfs tree, and the throttle inference the jtop source shares.
- ``jtop``: jetson-stats' client of the root jtop.service.
- ``nvml``: NVML on a dGPU development host.
- ``sampler``: :class:`TelemetrySampler`, and :func:`open_direct_source` for tools.

Where the board's tools and files are (the jtop socket, the sysfs root, nvpmodel's files)
is defined once, in :mod:`ishowtts_edge.config`.  All of it logs as ``telemetry``.
"""

from .jtop import JtopSource
from .nvml import NvmlSource
from .sample import TelemetryBuffer, TelemetrySample
from .sampler import TelemetrySampler, open_direct_source
from .source import SourceUnavailable, TelemetrySource
from .sysfs import SysfsReader, SysfsSource, ThrottleDetector, zone_name

__all__ = [
    "JtopSource",
    "NvmlSource",
    "SourceUnavailable",
    "SysfsReader",
    "SysfsSource",
    "TelemetryBuffer",
    "TelemetrySample",
    "TelemetrySampler",
    "TelemetrySource",
    "ThrottleDetector",
    "open_direct_source",
    "zone_name",
]
