"""Jetson sysfs (JetPack 5 and 6 paths): the source that needs no service, and the
over-current counters and GPU limits the jtop source takes from here too."""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from ..config import NVPMODEL_CONF, NVPMODEL_STATUS, TelemetryConfig
from .sample import TelemetrySample
from .source import SourceUnavailable, TelemetrySource

#: More than any sysfs attribute (one page) or nvpmodel.conf holds; a stray huge file is cut here.
_READ_LIMIT = 1 << 20

T = TypeVar("T")


def _read_status(path: Path) -> tuple[str | None, int | None]:
    """One attribute's text, or None when it cannot be read now, with the errno of a failed read.

    Read with os.read, not read_text(): a powered-off zone's temp (Orin's CV/DLA zones when idle,
    the GPU zone when rail-gated) fails in the kernel with EAGAIN, which buffered text I/O turns
    into a TypeError.  O_NONBLOCK changes nothing for sysfs; it keeps a fake board's stand-in for
    such a file (a FIFO with a writer and no data) failing with EAGAIN as well instead of blocking.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, exc.errno
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
        return b"".join(parts).decode().strip().strip("\0"), None
    except OSError as exc:  # BlockingIOError (EAGAIN) included
        return None, exc.errno
    except UnicodeDecodeError:
        return None, None
    finally:
        os.close(fd)


def _read(path: Path) -> str | None:
    return _read_status(path)[0]


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_int(path: Path) -> int | None:
    return _int(_read(path))


#: A read failing with these, in a directory that is gone too, means the scan is out of date.
_VANISHED = (errno.ENOENT, errno.ENODEV)


def zone_name(kind: str) -> str:
    """jtop's naming: the thermal zone type cut at the first '-' or '_' (cpu-thermal -> cpu)."""
    return re.split(r"[-_]", kind, maxsplit=1)[0]


GPU_NODE_NAMES = {"gv11b", "gp10b", "ga10b", "gb10b", "gpu"}
_MODE_CONF = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\w+)\s*>")


@dataclass
class BoardPaths:
    """What one scan of the board's sysfs directories found.

    Kept between samples: these directories stay put until a driver is reloaded, and a
    sample then finds one gone, or until a driver loads late and the periodic rescan finds
    its new directory (see :meth:`SysfsReader.fresh`).
    """

    devfreq: Path | None = None
    #: From available_frequencies: the board's, not the power mode's, maximum.
    gpu_hw_max_mhz: float | None = None
    cpus: list[Path] = field(default_factory=list)
    #: (zone directory, its type; None where the type could not be read at the scan)
    zones: list[tuple[Path, str | None]] = field(default_factory=list)
    #: hwmon directories by their name file, resolved to the device's own directory: a
    #: driver reload renumbers hwmonN, and the old number may then belong to another device.
    hwmons: dict[str, list[Path]] = field(default_factory=dict)
    #: INA3221 channels that measure a rail: (hwmon, channel, label)
    rails: list[tuple[Path, int, str]] = field(default_factory=list)
    #: soctherm over-current counters present: (hwmon, channel)
    oc_counters: list[tuple[Path, int]] = field(default_factory=list)


class SysfsReader:
    """Jetson sysfs under ``root`` (JetPack 5 and 6 paths).  Every reader returns None/empty
    for what it cannot read: the debugfs EMC rate, for one, is root-only.

    The directories are scanned once (:meth:`scan`) and read from then on; a read failing
    because its directory has gone marks the scan stale, and :meth:`fresh` scans again.
    Nothing vanishes when a driver loads after the scan (an INA3221 or a thermal zone late
    in a Jetson's boot, with the daemon started early), so :meth:`fresh` also scans again
    every ``rescan_interval_s`` of ``clock`` (0: never).
    """

    def __init__(self, root: Path, *, rescan_interval_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.rescan_interval_s = rescan_interval_s
        self._clock = clock
        self._paths: BoardPaths | None = None
        self._stale = False
        self._scanned_at = 0.0

    # -- scanning

    def gpu_devfreq(self) -> Path | None:
        base = self.sys / "class/devfreq"
        try:
            entries = sorted(base.iterdir())
        except OSError:
            return None
        for entry in entries:
            node = _read(entry / "device/of_node/name")
            if node in GPU_NODE_NAMES or (node and "gpu" in node) or "gpu" in entry.name or "ga10b" in entry.name:
                if (entry / "cur_freq").exists():
                    return entry
        return None

    def scan(self) -> BoardPaths:
        """Find the GPU's devfreq node, the CPUs, thermal zones and hwmon devices (directory scans)."""
        paths = BoardPaths(devfreq=self.gpu_devfreq())
        if paths.devfreq is not None:
            available = [int(x) for x in (_read(paths.devfreq / "available_frequencies") or "").split() if x.isdigit()]
            paths.gpu_hw_max_mhz = max(available) / 1e6 if available else None
        paths.cpus = sorted(self.sys.glob("devices/system/cpu/cpu[0-9]*"), key=lambda p: int(p.name[3:]))
        for zone in sorted(self.sys.glob("class/thermal/thermal_zone*"), key=lambda p: int(p.name[12:] or 0)):
            kind = _read(zone / "type")
            if kind and "PMIC" in kind:
                continue
            paths.zones.append((zone, kind))
        for hwmon in sorted(self.sys.glob("class/hwmon/hwmon*")):
            name = _read(hwmon / "name")
            if name is not None:
                paths.hwmons.setdefault(name, []).append(Path(os.path.realpath(hwmon)))
        for hwmon in paths.hwmons.get("ina3221", []):
            for n in range(1, 7):
                label = _read(hwmon / f"in{n}_label")
                if not label or "NC" in label.split() or label == "NC" or "sum of shunt" in label:
                    continue
                paths.rails.append((hwmon, n, label))
        for hwmon in paths.hwmons.get("soctherm_oc", []):
            paths.oc_counters += [(hwmon, n) for n in range(1, 5) if (hwmon / f"oc{n}_event_cnt").exists()]
        return paths

    def rescan(self) -> BoardPaths:
        self._paths, self._stale = self.scan(), False
        self._scanned_at = self._clock()
        return self._paths

    def paths(self) -> BoardPaths:
        """The last scan's paths (scanning on first use)."""
        return self._paths if self._paths is not None else self.rescan()

    def _rescan_due(self) -> bool:
        return (self.rescan_interval_s > 0 and self._paths is not None
                and self._clock() - self._scanned_at >= self.rescan_interval_s)

    def fresh(self, read: Callable[[], T]) -> T:
        """``read()``, scanning again first when an earlier read found a directory gone or
        the periodic rescan is due, and once more on a new scan when one of its own reads
        found a directory gone (its values from the old paths are then incomplete)."""
        if self._stale or self._rescan_due():
            self.rescan()
        value = read()
        if self._stale:
            self.rescan()
            value = read()
        return value

    def _read_in(self, directory: Path, name: str) -> str | None:
        """``directory/name``; a read failing because ``directory`` itself is gone (a devfreq
        node renamed, a hwmon renumbered by a driver reload) marks the scan stale.  Other
        failures (EAGAIN from a powered-off zone, EACCES) are only this sample's."""
        text, error = _read_status(directory / name)
        if error in _VANISHED and not directory.exists():
            self._stale = True
        return text

    def _read_int_in(self, directory: Path, name: str) -> int | None:
        return _int(self._read_in(directory, name))

    # -- readings

    def probe(self) -> Path:
        """Scan afresh; the GPU's devfreq node, or SourceUnavailable where there is none."""
        self.rescan()
        return self.devfreq()

    def devfreq(self) -> Path:
        devfreq = self.paths().devfreq
        if devfreq is None:
            raise SourceUnavailable(f"no Jetson GPU devfreq node under {self.sys / 'class/devfreq'}")
        return devfreq

    def gpu(self) -> dict[str, float | None]:
        devfreq = self.devfreq()
        mhz = lambda name: (v / 1e6 if (v := self._read_int_in(devfreq, name)) is not None else None)  # noqa: E731
        load = None
        for candidate in (devfreq / "device/load", self.sys / "devices/platform/gpu.0/load", self.sys / "devices/gpu.0/load"):
            load = _read_int(candidate)
            if load is not None:
                break
        return {
            "cur": mhz("cur_freq"),
            "min": mhz("min_freq"),
            "max": mhz("max_freq"),
            "hw_max": self.paths().gpu_hw_max_mhz,
            "load": load / 10 if load is not None else None,
        }

    def gpu_hw_max_mhz(self) -> float | None:
        return self.paths().gpu_hw_max_mhz

    def online_cpus(self) -> list[Path]:
        cpus = []
        for cpu in self.paths().cpus:
            if _read(cpu / "online") in (None, "1"):  # cpu0 often has no online file
                cpus.append(cpu)
        return cpus

    def cpu_cur_mhz(self, online: list[Path]) -> list[float]:
        """The clocks of the ``online`` CPUs (:meth:`online_cpus`, read once per sample)."""
        values = []
        for cpu in online:
            khz = _read_int(cpu / "cpufreq/scaling_cur_freq")
            if khz is not None:
                values.append(khz / 1000)
        return values

    def emc_mhz(self) -> float | None:
        hz = _read_int(self.sys / "kernel/debug/bpmp/debug/clk/emc/rate")
        return hz / 1e6 if hz is not None else None

    def temperatures(self) -> dict[str, float]:
        temps: dict[str, float] = {}
        for zone, known in self.paths().zones:
            kind = known or _read(zone / "type")
            if not kind or "PMIC" in kind:
                continue
            milli = self._read_int_in(zone, "temp")
            if milli is None or milli <= -256000:  # offline / railgated: not a reading, not an alarm
                continue
            name = zone_name(kind)
            while name in temps:
                name += "_"
            temps[name] = milli / 1000
        return temps

    def hwmons(self, name: str) -> list[Path]:
        return list(self.paths().hwmons.get(name, []))

    def power_mw(self) -> float | None:
        rails: dict[str, float] = {}
        for hwmon, n, label in self.paths().rails:
            mv, ma = self._read_int_in(hwmon, f"in{n}_input"), self._read_int_in(hwmon, f"curr{n}_input")
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
                pwm = self._read_int_in(hwmon, "pwm1")
                if pwm is not None:
                    return round(pwm * 100 / 255, 1)
        return None

    def nvpmodel(self) -> tuple[int | None, str | None]:
        status = _read(self.root / NVPMODEL_STATUS)
        match = re.search(r"pmode:(\d+)", status or "")
        if not match:
            return None, None
        mode_id = int(match.group(1))
        names = dict(_MODE_CONF.findall(_read(self.root / NVPMODEL_CONF) or ""))
        return mode_id, names.get(str(mode_id))

    def clocks_locked(self, gpu: dict[str, float | None], online: list[Path]) -> bool | None:
        pairs = []
        for cpu in online:
            lo, hi = _read_int(cpu / "cpufreq/scaling_min_freq"), _read_int(cpu / "cpufreq/scaling_max_freq")
            if lo is None or hi is None:
                return None
            pairs.append(lo == hi)
        if not pairs or gpu["min"] is None or gpu["max"] is None:
            return None
        return all(pairs) and gpu["min"] == gpu["max"]

    def oc_event_counts(self) -> dict[str, int]:
        counts = {}
        for hwmon, n in self.paths().oc_counters:
            value = self._read_int_in(hwmon, f"oc{n}_event_cnt")
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


class SysfsSource(TelemetrySource):
    name = "sysfs"

    def __init__(self, cfg: TelemetryConfig, *, clock: Callable[[], float] = time.monotonic):
        #: ``clock`` times the periodic rescan; samples keep time.monotonic, the sampler's clock.
        self.reader = SysfsReader(cfg.sysfs_root, rescan_interval_s=cfg.rescan_interval_s, clock=clock)
        self.throttle = ThrottleDetector(cfg.hot_tj_c)

    def open(self) -> None:
        self.reader.probe()
        self.throttle.reset()

    def read(self) -> TelemetrySample:
        sample, oc_counts = self.reader.fresh(self._read)
        sample.throttle = self.throttle.tags(sample, oc_counts)
        return sample

    def _read(self) -> tuple[TelemetrySample, dict[str, int]]:
        gpu = self.reader.gpu()  # SourceUnavailable once a new scan finds no devfreq node
        mode_id, mode_name = self.reader.nvpmodel()
        online = self.reader.online_cpus()
        sample = TelemetrySample(
            monotonic=time.monotonic(),
            wall=time.time(),
            source=self.name,
            gpu_cur_mhz=gpu["cur"],
            gpu_min_mhz=gpu["min"],
            gpu_max_mhz=gpu["max"],
            gpu_hw_max_mhz=gpu["hw_max"],
            gpu_load_pct=gpu["load"],
            cpu_cur_mhz=self.reader.cpu_cur_mhz(online),
            emc_cur_mhz=self.reader.emc_mhz(),
            temperatures_c=self.reader.temperatures(),
            power_mw=self.reader.power_mw(),
            fan_pct=self.reader.fan_pct(),
            nvpmodel_id=mode_id,
            nvpmodel_name=mode_name,
            jetson_clocks=self.reader.clocks_locked(gpu, online),
        )
        return sample, self.reader.oc_event_counts()
