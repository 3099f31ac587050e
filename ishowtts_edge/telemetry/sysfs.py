"""Jetson sysfs (JetPack 5 and 6 paths): the source that needs no service, and the
over-current counters and GPU limits the jtop source takes from here too."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ..config import NVPMODEL_CONF, NVPMODEL_STATUS, TelemetryConfig
from .sample import TelemetrySample
from .source import SourceUnavailable, TelemetrySource

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


GPU_NODE_NAMES = {"gv11b", "gp10b", "ga10b", "gb10b", "gpu"}
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
            if node in GPU_NODE_NAMES or (node and "gpu" in node) or "gpu" in entry.name or "ga10b" in entry.name:
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
        status = _read(self.root / NVPMODEL_STATUS)
        match = re.search(r"pmode:(\d+)", status or "")
        if not match:
            return None, None
        mode_id = int(match.group(1))
        names = dict(_MODE_CONF.findall(_read(self.root / NVPMODEL_CONF) or ""))
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
