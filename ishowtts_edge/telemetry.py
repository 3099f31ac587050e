"""Hardware telemetry: clocks, thermals, power, from jtop, sysfs or NVML.

One background thread reads the first working source in ``cfg.sources`` every
``interval_s`` and keeps a short ring buffer, so the RTF monitor can ask what the
clocks were while a synthesis ran (:meth:`TelemetrySampler.nearest`).  A source
that fails is closed and retried with backoff while the next one takes over;
every switch is logged and shown in :meth:`TelemetrySampler.status`.  With no
working source nothing is invented: ``latest()`` is None and status says why.

jtop's client is kept open for the daemon's life (reading it after its context
closes gives frozen data) and re-created after the jtop.service dies.
"""

from __future__ import annotations

import bisect
import os
import logging
import re
import stat
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import TelemetryConfig
from .logs import kv

log = logging.getLogger(__name__)


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


class SourceUnavailable(Exception):
    """This source cannot deliver now (absent, unreachable, died); the message says why."""


# --------------------------------------------------------------------------- sysfs


#: More than any sysfs attribute (one page) or nvpmodel.conf holds; a stray huge file is cut here.
_READ_LIMIT = 1 << 20


def _read(path: Path) -> str | None:
    """One attribute's text, or None when it cannot be read now.

    Read with os.read, not read_text(): a powered-off zone's temp (Orin's CV/DLA zones when idle,
    the GPU zone when rail-gated) fails in the kernel with EAGAIN, which buffered text I/O turns
    into a TypeError.  O_NONBLOCK changes nothing for sysfs; it keeps a fake board's stand-in for
    such a file (a FIFO with a writer and no data) failing with EAGAIN as well instead of blocking.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        parts: list[bytes] = []
        size = 0
        while size < _READ_LIMIT:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        # device-tree properties end in NUL, not newline
        return b"".join(parts).decode().strip().strip("\0")
    except (OSError, UnicodeDecodeError):  # BlockingIOError (EAGAIN) included
        return None
    finally:
        os.close(fd)


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def zone_name(kind: str) -> str:
    """jtop's naming: the thermal zone type cut at the first '-' or '_' (cpu-thermal -> cpu)."""
    return re.split(r"[-_]", kind, maxsplit=1)[0]


_GPU_NODE_NAMES = {"gv11b", "gp10b", "ga10b", "gb10b", "gpu"}
_MODE_CONF = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\w+)\s*>")


class SysfsReader:
    """Jetson sysfs under ``root`` (JetPack 5 and 6 paths).  Every reader returns None/empty
    for what it cannot read: the debugfs EMC rate, for one, is root-only."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.sys = self.root / "sys"

    def gpu_devfreq(self) -> Path | None:
        base = self.sys / "class/devfreq"
        try:
            entries = sorted(base.iterdir())
        except OSError:
            return None
        for entry in entries:
            node = _read(entry / "device/of_node/name")
            if node in _GPU_NODE_NAMES or (node and "gpu" in node) or "gpu" in entry.name or "ga10b" in entry.name:
                if (entry / "cur_freq").exists():
                    return entry
        return None

    def probe(self) -> Path:
        devfreq = self.gpu_devfreq()
        if devfreq is None:
            raise SourceUnavailable(f"no Jetson GPU devfreq node under {self.sys / 'class/devfreq'}")
        return devfreq

    def gpu(self, devfreq: Path) -> dict[str, float | None]:
        mhz = lambda name: (v / 1e6 if (v := _read_int(devfreq / name)) is not None else None)  # noqa: E731
        available = [int(x) for x in (_read(devfreq / "available_frequencies") or "").split() if x.isdigit()]
        load = None
        for candidate in (devfreq / "device/load", self.sys / "devices/platform/gpu.0/load", self.sys / "devices/gpu.0/load"):
            load = _read_int(candidate)
            if load is not None:
                break
        return {
            "cur": mhz("cur_freq"),
            "min": mhz("min_freq"),
            "max": mhz("max_freq"),
            "hw_max": max(available) / 1e6 if available else None,
            "load": load / 10 if load is not None else None,
        }

    def online_cpus(self) -> list[Path]:
        cpus = []
        for cpu in sorted(self.sys.glob("devices/system/cpu/cpu[0-9]*"), key=lambda p: int(p.name[3:])):
            if _read(cpu / "online") in (None, "1"):  # cpu0 often has no online file
                cpus.append(cpu)
        return cpus

    def cpu_cur_mhz(self) -> list[float]:
        values = []
        for cpu in self.online_cpus():
            khz = _read_int(cpu / "cpufreq/scaling_cur_freq")
            if khz is not None:
                values.append(khz / 1000)
        return values

    def emc_mhz(self) -> float | None:
        hz = _read_int(self.sys / "kernel/debug/bpmp/debug/clk/emc/rate")
        return hz / 1e6 if hz is not None else None

    def temperatures(self) -> dict[str, float]:
        temps: dict[str, float] = {}
        for zone in sorted(self.sys.glob("class/thermal/thermal_zone*"), key=lambda p: int(p.name[12:] or 0)):
            kind = _read(zone / "type")
            if not kind or "PMIC" in kind:
                continue
            milli = _read_int(zone / "temp")
            if milli is None or milli <= -256000:  # offline / railgated: not a reading, not an alarm
                continue
            name = zone_name(kind)
            while name in temps:
                name += "_"
            temps[name] = milli / 1000
        return temps

    def hwmons(self, name: str) -> list[Path]:
        return [h for h in sorted(self.sys.glob("class/hwmon/hwmon*")) if _read(h / "name") == name]

    def power_mw(self) -> float | None:
        rails: dict[str, float] = {}
        for hwmon in self.hwmons("ina3221"):
            for n in range(1, 7):
                label = _read(hwmon / f"in{n}_label")
                if not label or "NC" in label.split() or label == "NC" or "sum of shunt" in label:
                    continue
                mv, ma = _read_int(hwmon / f"in{n}_input"), _read_int(hwmon / f"curr{n}_input")
                if mv is not None and ma is not None:
                    rails[label] = mv * ma / 1000
        if not rails:
            return None
        for total in ("VDD_IN", "VIN", "POM_5V_IN"):  # a board-input rail is the total (Orin NX/Nano)
            if total in rails:
                return rails[total]
        return sum(rails.values())  # AGX Orin has none: jtop sums the rails too

    def fan_pct(self) -> float | None:
        for name in ("pwmfan", "pwm-fan", "pwm_fan"):
            for hwmon in self.hwmons(name):
                pwm = _read_int(hwmon / "pwm1")
                if pwm is not None:
                    return round(pwm * 100 / 255, 1)
        return None

    def nvpmodel(self) -> tuple[int | None, str | None]:
        status = _read(self.root / "var/lib/nvpmodel/status")
        match = re.search(r"pmode:(\d+)", status or "")
        if not match:
            return None, None
        mode_id = int(match.group(1))
        names = dict(_MODE_CONF.findall(_read(self.root / "etc/nvpmodel.conf") or ""))
        return mode_id, names.get(str(mode_id))

    def clocks_locked(self, gpu: dict[str, float | None]) -> bool | None:
        pairs = []
        for cpu in self.online_cpus():
            lo, hi = _read_int(cpu / "cpufreq/scaling_min_freq"), _read_int(cpu / "cpufreq/scaling_max_freq")
            if lo is None or hi is None:
                return None
            pairs.append(lo == hi)
        if not pairs or gpu["min"] is None or gpu["max"] is None:
            return None
        return all(pairs) and gpu["min"] == gpu["max"]

    def oc_event_counts(self) -> dict[str, int]:
        counts = {}
        for hwmon in self.hwmons("soctherm_oc"):
            for n in range(1, 5):
                value = _read_int(hwmon / f"oc{n}_event_cnt")
                if value is not None:
                    counts[f"oc{n}"] = value
        return counts


class ThrottleDetector:
    """Orin has no thermal-throttle flag: infer it (reference section 4).

    * ``ocN``: the soctherm over-current event counter N rose since the last sample;
    * ``gpu_below_min``: the GPU runs below its (locked) minimum;
    * ``thermal``: that, while tj is at or above ``hot_tj_c``.
    """

    def __init__(self, hot_tj_c: float):
        self.hot_tj_c = hot_tj_c
        self._last: dict[str, int] = {}

    def reset(self) -> None:
        self._last = {}

    def tags(self, sample: TelemetrySample, oc_counts: dict[str, int]) -> list[str]:
        tags = [name for name, value in sorted(oc_counts.items()) if name in self._last and value > self._last[name]]
        self._last = dict(oc_counts)
        cur, lo = sample.gpu_cur_mhz, sample.gpu_min_mhz
        if cur is not None and lo is not None and cur < lo - 0.5:
            tags.append("gpu_below_min")
            tj = sample.temperatures_c.get("tj")
            if tj is not None and tj >= self.hot_tj_c:
                tags.append("thermal")
        return tags


# --------------------------------------------------------------------------- sources


class TelemetrySource:
    name = "?"

    def open(self) -> None:
        """Connect or probe; raise SourceUnavailable with the reason."""

    def read(self) -> TelemetrySample:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SysfsSource(TelemetrySource):
    name = "sysfs"

    def __init__(self, cfg: TelemetryConfig):
        self.reader = SysfsReader(cfg.sysfs_root)
        self.throttle = ThrottleDetector(cfg.hot_tj_c)

    def open(self) -> None:
        self.reader.probe()
        self.throttle.reset()

    def read(self) -> TelemetrySample:
        devfreq = self.reader.probe()  # the node can vanish (or appear late, early in boot)
        gpu = self.reader.gpu(devfreq)
        mode_id, mode_name = self.reader.nvpmodel()
        sample = TelemetrySample(
            monotonic=time.monotonic(),
            wall=time.time(),
            source=self.name,
            gpu_cur_mhz=gpu["cur"],
            gpu_min_mhz=gpu["min"],
            gpu_max_mhz=gpu["max"],
            gpu_hw_max_mhz=gpu["hw_max"],
            gpu_load_pct=gpu["load"],
            cpu_cur_mhz=self.reader.cpu_cur_mhz(),
            emc_cur_mhz=self.reader.emc_mhz(),
            temperatures_c=self.reader.temperatures(),
            power_mw=self.reader.power_mw(),
            fan_pct=self.reader.fan_pct(),
            nvpmodel_id=mode_id,
            nvpmodel_name=mode_name,
            jetson_clocks=self.reader.clocks_locked(gpu),
        )
        sample.throttle = self.throttle.tags(sample, self.reader.oc_event_counts())
        return sample


#: Where jtop.service listens (jetson-stats' JTOP_PIPE).
JTOP_SOCKET = Path("/run/jtop.sock")


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
    """jetson-stats' client, talking to the root jtop.service over /run/jtop.sock.

    Read only: setting ``j.nvpmodel``/``j.jetson_clocks`` would fight hwctl (jtop's
    "uncontrolled" state and silent mask refusals; reference section 1).  The
    over-current counters and the GPU's hardware maximum, which jtop does not expose,
    come from sysfs.
    """

    name = "jtop"

    def __init__(self, cfg: TelemetryConfig, factory: Callable[[float], Any] | None = None):
        self.cfg = cfg
        self.factory = factory or _real_jtop_factory
        self.reader = SysfsReader(cfg.sysfs_root)
        self.throttle = ThrottleDetector(cfg.hot_tj_c)
        self.jetson: Any = None

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
        sample.throttle = self.throttle.tags(sample, self.reader.oc_event_counts())
        return sample

    def _sample(self, j: Any) -> TelemetrySample:
        sample = TelemetrySample(monotonic=time.monotonic(), wall=time.time(), source=self.name)
        gpus = j.gpu or {}
        gpu = gpus.get("gpu") or next((v for k, v in gpus.items() if "gpu" in k or k in _GPU_NODE_NAMES), None)
        if gpu is None and gpus:
            gpu = next(iter(gpus.values()))
        if gpu:
            freq = gpu.get("freq") or {}
            khz = lambda key: freq[key] / 1000 if isinstance(freq.get(key), (int, float)) else None  # noqa: E731
            sample.gpu_cur_mhz, sample.gpu_min_mhz, sample.gpu_max_mhz = khz("cur"), khz("min"), khz("max")
            load = (gpu.get("status") or {}).get("load")
            sample.gpu_load_pct = float(load) if isinstance(load, (int, float)) else None
        devfreq = self.reader.gpu_devfreq()
        if devfreq is not None:
            sample.gpu_hw_max_mhz = self.reader.gpu(devfreq)["hw_max"]
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


# --------------------------------------------------------------------------- sampler


def open_direct_source(cfg: TelemetryConfig | None = None) -> TelemetrySource | None:
    """A source read synchronously by tools (ishowtts-edge bench, engine_ab.py), not by the daemon.

    sysfs first (a Jetson's devfreq node, no service needed), then NVML (a dGPU host);
    jtop is left out because a benchmark must not depend on its service.  None where neither
    opens, e.g. a CPU-only machine.
    """
    cfg = cfg or TelemetryConfig()
    for source in (SysfsSource(cfg), NvmlSource(cfg)):
        try:
            source.open()
            source.read()
            return source
        except SourceUnavailable:
            source.close()
    return None


class TelemetrySampler:
    """Background sampling with source fallback.  Thread-safe readers."""

    def __init__(
        self,
        cfg: TelemetryConfig,
        on_sample: list[Callable[[TelemetrySample], None]] | None = None,
        *,
        source_factories: dict[str, Callable[[], TelemetrySource]] | None = None,
    ):
        self.cfg = cfg
        #: Called in the sampler thread with each new sample; exceptions are logged, not fatal.
        self.on_sample: list[Callable[[TelemetrySample], None]] = list(on_sample or [])
        factories: dict[str, Callable[[], TelemetrySource]] = {
            "jtop": lambda: JtopSource(cfg),
            "sysfs": lambda: SysfsSource(cfg),
            "nvml": lambda: NvmlSource(cfg),
        }
        factories.update(source_factories or {})
        self._factories = {name: factories[name] for name in cfg.sources}
        self._lock = threading.Lock()
        self._buffer: deque[TelemetrySample] = deque(maxlen=max(5, int(cfg.buffer_s / cfg.interval_s) + 1))
        self._source: TelemetrySource | None = None
        self._errors: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        #: Sources whose last failure repeated the one before it, with no sample in between.
        self._repeating: set[str] = set()
        self._last_error: str | None = None
        self._switches: deque[dict[str, Any]] = deque(maxlen=10)
        self._samples = 0
        self._stop = threading.Event()
        self._settled = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def wait_settled(self, timeout: float) -> bool:
        """Wait until the first pass is over: a source delivered a sample, or all were tried.

        Opening sources costs CPU (importing jtop, NVML's init); a caller that is about to
        serve waits for it here rather than have it overlap its first requests.
        """
        return self._settled.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            source, self._source = self._source, None
        if source is not None:
            source.close()

    # -- readers

    def latest(self) -> TelemetrySample | None:
        with self._lock:
            sample = self._buffer[-1] if self._buffer else None
            live = self._source is not None
        if sample is None or not live or time.monotonic() - sample.monotonic > self.cfg.stale_after_s:
            return None
        return sample

    def nearest(self, monotonic_t: float, max_gap_s: float | None = None) -> TelemetrySample | None:
        """The buffered sample closest in time to ``monotonic_t`` (None if none within max_gap_s)."""
        gap = max_gap_s if max_gap_s is not None else 2 * self.cfg.interval_s + 1.0
        with self._lock:
            samples = list(self._buffer)
        if not samples:
            return None
        times = [s.monotonic for s in samples]
        index = bisect.bisect_left(times, monotonic_t)
        candidates = [samples[i] for i in (index - 1, index) if 0 <= i < len(samples)]
        best = min(candidates, key=lambda s: abs(s.monotonic - monotonic_t))
        return best if abs(best.monotonic - monotonic_t) <= gap else None

    def status(self) -> dict[str, Any]:
        with self._lock:
            source = self._source.name if self._source is not None else None
            sample = self._buffer[-1] if self._buffer else None
            errors = dict(self._errors)
            switches = list(self._switches)
            last_error = self._last_error
            count = self._samples
        age = time.monotonic() - sample.monotonic if sample is not None else None
        available = source is not None and age is not None and age <= self.cfg.stale_after_s
        if available:
            summary = f"{source}, last sample {age:.1f} s ago"
        elif source is not None:
            summary = f"{source} connected, no recent sample"
        else:
            reasons = "; ".join(f"{name}: {why}" for name, why in errors.items()) or "not started"
            summary = f"unavailable ({reasons})"
        return {
            "available": available,
            "source": source,
            "summary": summary,
            "age_s": round(age, 3) if age is not None else None,
            "last_error": last_error,
            "source_errors": errors,
            "switches": switches,
            "samples": count,
        }

    # -- the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._choose_source()
            source = self._source
            if source is not None:
                try:
                    sample = source.read()
                except SourceUnavailable as exc:
                    self._fail(source, str(exc))
                    continue  # fall back now, not an interval later
                except Exception as exc:  # noqa: BLE001 - a reader bug must not kill telemetry
                    log.exception("telemetry source %s failed", source.name)
                    self._fail(source, f"{type(exc).__name__}: {exc}")
                    continue
                else:
                    self._read_ok(source.name)
                    self._publish(sample)
            self._settled.set()  # a sample, or every source tried and failed
            self._stop.wait(max(0.0, self.cfg.interval_s - (time.monotonic() - started)))

    def _choose_source(self) -> None:
        """Keep the current source unless one earlier in cfg.sources is due for a retry."""
        now = time.monotonic()
        names = list(self._factories)
        current = self._source.name if self._source is not None else None
        limit = names.index(current) if current is not None else len(names)
        for name in names[:limit]:
            if self._retry_at.get(name, 0.0) > now:
                continue
            source = self._factories[name]()
            try:
                source.open()
            except SourceUnavailable as exc:
                self._mark_failed(name, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001
                self._mark_failed(name, f"{type(exc).__name__}: {exc}")
                continue
            self._switch_to(source)
            return

    def _switch_to(self, source: TelemetrySource) -> None:
        with self._lock:
            previous, self._source = self._source, source
            self._retry_at.pop(source.name, None)  # its error and back-off stay until it delivers (_read_ok)
            skipped = {name: why for name, why in self._errors.items() if name in self._factories}
            names = list(self._factories)
            ahead = names[: names.index(source.name)]
            # Nothing new when the source reopens after failing the same way again, or is the
            # fallback while every source ahead of it does: a flapping jtop would log each round.
            repeat = (source.name in self._repeating if source.name in self._errors
                      else bool(ahead) and all(name in self._repeating for name in ahead))
            self._switches.append({"wall": time.time(), "from": previous.name if previous else None, "to": source.name})
        if previous is not None:
            previous.close()
        preferred = next(iter(self._factories))
        # Running on a fallback is worth a warning; getting the preferred source (back) is news.
        level = logging.DEBUG if repeat else logging.INFO if source.name == preferred else logging.WARNING
        log.log(level, "telemetry source %s", kv(
            source=source.name,
            previous=previous.name if previous else "none",
            unavailable="; ".join(f"{n}: {w}" for n, w in skipped.items()) or "none",
        ))

    def _read_ok(self, name: str) -> None:
        """A sample came: the source works, so its next failure starts from the shortest back-off."""
        if name in self._backoff or name in self._errors:
            with self._lock:
                self._backoff.pop(name, None)
                reason = self._errors.pop(name, None)
                quiet = name in self._repeating
                self._repeating.discard(name)
            if quiet:  # its reopening was logged at debug only
                log.info("telemetry source delivering again %s", kv(source=name, after=reason or "none"))

    def _fail(self, source: TelemetrySource, reason: str) -> None:
        source.close()
        with self._lock:
            if self._source is source:
                self._source = None
            self._switches.append({"wall": time.time(), "from": source.name, "to": None, "reason": reason})
            again = self._errors.get(source.name) == reason  # opened, then failed as before: no sample between
        self._mark_failed(source.name, reason)
        # A source that opens and then fails the same way every time (a jtop that connects but
        # sends nothing) would otherwise write a warning per retry, forever.
        log.log(logging.DEBUG if again else logging.WARNING, "telemetry source lost %s", kv(source=source.name, reason=reason))

    def _mark_failed(self, name: str, reason: str) -> None:
        delay = min(self._backoff.get(name, self.cfg.reconnect_min_s / 2) * 2, self.cfg.reconnect_max_s)
        with self._lock:
            first = name not in self._errors or self._errors[name] != reason
            if first:
                self._repeating.discard(name)
            else:
                self._repeating.add(name)
            self._errors[name] = reason
            self._last_error = f"{name}: {reason}"
            self._backoff[name] = delay
            self._retry_at[name] = time.monotonic() + delay
        if first:
            log.info("telemetry source unavailable %s", kv(source=name, reason=reason, retry_in_s=delay))

    def _publish(self, sample: TelemetrySample) -> None:
        with self._lock:
            self._buffer.append(sample)
            self._samples += 1
        for callback in list(self.on_sample):
            try:
                callback(sample)
            except Exception:  # noqa: BLE001
                log.exception("telemetry on_sample callback failed")
