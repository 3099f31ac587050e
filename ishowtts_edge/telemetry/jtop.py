"""jetson-stats' client, reading the root jtop.service.

The client is kept open for the daemon's life (reading it after its context closes gives
frozen data) and re-created after the jtop.service dies.
"""

from __future__ import annotations

import stat
import threading
import time
from typing import Any, Callable

from ..config import JTOP_SOCKET, TelemetryConfig
from .sample import TelemetrySample
from .source import SourceUnavailable, TelemetrySource
from .sysfs import GPU_NODE_NAMES, SysfsReader, ThrottleDetector


def _real_jtop_factory(interval: float) -> Any:
    # Looked at before building a client: every jtop() starts a thread that probes CUDA,
    # OpenCV and the OS libraries (subprocesses, ~70 ms of Python), even when no service
    # answers.  Retried every minute on a host without jtop.service, that thread held the
    # GIL against the synthesis worker: 2-4 requests in a row 1.5-3.5x slower on an H200
    # (docs/benchmarks.md, "Alternatives measured").
    try:
        listening = stat.S_ISSOCK(JTOP_SOCKET.stat().st_mode)
    except OSError:
        listening = False
    if not listening:
        raise SourceUnavailable(f"The jtop.service is not active (no socket at {JTOP_SOCKET})")
    try:
        from jtop import jtop
    except ImportError as exc:  # jetson-stats not installed
        raise SourceUnavailable(f"jetson-stats is not installed ({exc})") from None
    return jtop(interval=interval)


class JtopSource(TelemetrySource):
    """jetson-stats' client, talking to the root jtop.service over its socket (JTOP_SOCKET).

    Read only: setting ``j.nvpmodel``/``j.jetson_clocks`` would fight hwctl (jtop's
    "uncontrolled" state and silent mask refusals; reference section 1).  The
    over-current counters and the GPU's hardware maximum, which jtop does not expose,
    come from sysfs.
    """

    name = "jtop"

    def __init__(self, cfg: TelemetryConfig, factory: Callable[[float], Any] | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.factory = factory or _real_jtop_factory
        #: ``clock`` times the periodic rescan; samples keep time.monotonic, the sampler's clock.
        self.reader = SysfsReader(cfg.sysfs_root, rescan_interval_s=cfg.rescan_interval_s, clock=clock)
        self.throttle = ThrottleDetector(cfg.hot_tj_c)
        self.jetson: Any = None
        #: The GPUs jtop reported when the hardware maximum was last looked up (None: never).
        self._gpu_names: list[str] | None = None

    #: How long connecting may take before the attempt counts as failed.
    START_TIMEOUT_S = 15.0
    #: Connect threads still running after START_TIMEOUT_S, by client factory: jetson-stats'
    #: close() does not end a start() that a hung jtop.service never answers, so each retry
    #: would leave one more thread (and client) behind.
    _stuck_connects: dict[Any, tuple[threading.Thread, float]] = {}

    def open(self) -> None:
        stuck = self._stuck_connects.get(self.factory)
        if stuck is not None:
            thread, since = stuck
            if thread.is_alive():
                raise SourceUnavailable(
                    f"an earlier connect to jtop.service is still unanswered after {time.monotonic() - since:.0f} s"
                )
            del self._stuck_connects[self.factory]
        jetson = self.factory(self.cfg.interval_s)
        # Connect from a fresh thread every time: multiprocessing's proxies cache one
        # connection per thread and address, so after jtop.service restarts, a retry from
        # the same thread reuses the dead connection and fails with BrokenPipeError
        # (observed with jetson-stats 7.2.2 and a restarted service).
        failure: list[BaseException] = []

        def connect() -> None:
            try:
                jetson.start()
            except BaseException as exc:  # noqa: BLE001 - JtopException and the socket errors it lets through
                failure.append(exc)
            if abandoned.is_set():
                # jetson-stats' start() sets the client running again after our close(): a late
                # answer would leave its reader thread (and service connection) up for good.
                _close_quietly(jetson)

        abandoned = threading.Event()
        thread = threading.Thread(target=connect, name="jtop-connect", daemon=True)
        started = time.monotonic()
        thread.start()
        thread.join(self.START_TIMEOUT_S)
        if thread.is_alive():
            abandoned.set()  # before the close below: whichever runs last closes the client
            self._stuck_connects[self.factory] = (thread, started)
        if thread.is_alive() or failure:
            _close_quietly(jetson)
            reason = _first_line(failure[0]) if failure else f"no answer within {self.START_TIMEOUT_S:g} s"
            raise SourceUnavailable(reason)
        self.jetson = jetson
        self.throttle.reset()

    def close(self) -> None:
        if self.jetson is not None:
            _close_quietly(self.jetson)
            self.jetson = None

    def read(self) -> TelemetrySample:
        jetson = self.jetson
        if jetson is None:
            raise SourceUnavailable("jtop is not connected")
        try:
            if not jetson.ok():
                raise SourceUnavailable(f"jtop delivered no data within {3 * self.cfg.interval_s:g} s")
            sample = self._sample(jetson)
        except SourceUnavailable:
            raise
        except Exception as exc:  # JtopException('Lost connection with jtop server'), EOFError, ...
            raise SourceUnavailable(_first_line(exc)) from None
        sample.throttle = self.throttle.tags(sample, self.reader.fresh(self.reader.oc_event_counts))
        return sample

    def _hw_max_mhz(self, gpus: dict[str, Any]) -> float | None:
        """The GPU's hardware maximum, from sysfs: scanned again when the GPUs jtop reports
        change, and with the reader's periodic rescan.  jtop.service finds the GPUs when it
        starts: one started before the devfreq node existed reports none until it restarts,
        while the node's maximum is found by the next periodic rescan."""
        names = sorted(gpus)
        if names != self._gpu_names:
            self._gpu_names = names
            self.reader.rescan()
        return self.reader.fresh(self.reader.gpu_hw_max_mhz)

    def _sample(self, j: Any) -> TelemetrySample:
        sample = TelemetrySample(monotonic=time.monotonic(), wall=time.time(), source=self.name)
        gpus = j.gpu or {}
        gpu = gpus.get("gpu") or next((v for k, v in gpus.items() if "gpu" in k or k in GPU_NODE_NAMES), None)
        if gpu is None and gpus:
            gpu = next(iter(gpus.values()))
        if gpu:
            freq = gpu.get("freq") or {}
            khz = lambda key: freq[key] / 1000 if isinstance(freq.get(key), (int, float)) else None  # noqa: E731
            sample.gpu_cur_mhz, sample.gpu_min_mhz, sample.gpu_max_mhz = khz("cur"), khz("min"), khz("max")
            load = (gpu.get("status") or {}).get("load")
            sample.gpu_load_pct = float(load) if isinstance(load, (int, float)) else None
        sample.gpu_hw_max_mhz = self._hw_max_mhz(gpus)
        cpus = (j.cpu or {}).get("cpu") or []
        sample.cpu_cur_mhz = [c["freq"]["cur"] / 1000 for c in cpus if c.get("online") and "freq" in c]
        emc = (j.memory or {}).get("EMC") or {}
        if emc.get("online", True) and isinstance(emc.get("cur"), (int, float)):
            sample.emc_cur_mhz = emc["cur"] / 1000
        sample.temperatures_c = {
            name: float(t["temp"])
            for name, t in (j.temperature or {}).items()
            if t.get("online", True) and isinstance(t.get("temp"), (int, float)) and t["temp"] > -256
        }
        power = j.power or {}
        total = power.get("tot") or {}
        if isinstance(total.get("power"), (int, float)):
            sample.power_mw = float(total["power"])
        for fan in (j.fan or {}).values():
            speeds = fan.get("speed") or []
            if speeds:
                sample.fan_pct = float(speeds[0])
                break
        nvp = j.nvpmodel
        if nvp is not None:
            sample.nvpmodel_id, sample.nvpmodel_name = int(nvp.id), str(nvp.name)
        clocks = j.jetson_clocks
        sample.jetson_clocks = bool(clocks) if clocks is not None else None
        return sample


def _close_quietly(jetson: Any) -> None:
    try:
        jetson.close()
    except Exception:  # noqa: BLE001 - closing a dead client must not stop the fallback
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
