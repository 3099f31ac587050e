"""A fake Jetson AGX Orin: a sysfs tree plus fake ``nvpmodel`` and ``jetson_clocks``.

Usage::

    board = FakeBoard(tmp_path)                 # JetPack 6 paths, MAXN, clocks unlocked (jetpack=5 or 7 too)
    board.nvpmodel, board.jetson_clocks          # executables to configure tools with
    board.sysfs_root                             # TelemetryConfig.sysfs_root
    board.set_gpu_freq(cur_hz=612_000_000)       # e.g. simulate a throttled GPU
    board.set_temp("tj", 97.0); board.add_oc_events(3, 12)

The tools keep all their state in this tree (sysfs files they write, the nvpmodel
status file, ``.fake/board.json`` for options), so a query after an apply really
shows locked clocks.  ``board.env`` carries ``FAKE_JETSON_ROOT`` for running the
scripts in tests/fakes/ directly; the wrappers in ``board.bin`` bake it in.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

from . import orin
from .orin import Layout, read, write

FAKES_DIR = Path(__file__).resolve().parent


def _put(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, value)


def _link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(os.path.relpath(target, path.parent))


class FakeBoard:
    def __init__(self, base: Path | str, *, jetpack: int = 6, power_mode: str = "MAXN"):
        base = Path(base)
        self.base = base
        self.root = base / "board"
        self._held: list[int] = []  # FIFO descriptors of powered-off zones
        self.bin = base / "bin"
        self.layout = Layout(self.root, jetpack)
        self.layout.update_state(jetpack=jetpack)
        self._build()
        mode_id = orin.mode_by_name(power_mode)
        if mode_id is None:
            raise ValueError(f"unknown AGX Orin power mode {power_mode!r}")
        orin.apply_mode(self.layout, mode_id)
        self.nvpmodel = self._wrapper("nvpmodel")
        self.jetson_clocks = self._wrapper("jetson_clocks")

    # ------------------------------------------------------------------ public API

    @property
    def sysfs_root(self) -> Path:
        """Stands for ``/``: sysfs is under ``sys/``, nvpmodel's files under ``var/`` and ``etc/``."""
        return self.root

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FAKE_JETSON_ROOT"] = str(self.root)
        env["PATH"] = f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def set_option(self, **options) -> None:
        """Fault injection for the fake tools:

        * ``nvpmodel_prompt_hangs=True``: the reboot prompt never returns (like a tty nobody answers);
        * ``gpu_lock_fails=True``: jetson_clocks prints "Error: Failed to max GPU frequency!" and exits 0.
        """
        self.layout.update_state(**options)

    def power_mode(self) -> tuple[int, str]:
        mode = orin.current_mode(self.layout)
        return mode, orin.MODES[mode][0]

    def gpu(self) -> dict[str, int]:
        d = self.layout.devfreq
        return {k: int(read(d / f"{k}_freq")) for k in ("cur", "min", "max")}

    def set_gpu_freq(self, cur_hz: int | None = None, min_hz: int | None = None, max_hz: int | None = None) -> None:
        """Write devfreq files as the kernel would show them (cur is NOT clamped here: a
        throttled GPU reads below its locked minimum, which is what telemetry must notice)."""
        d = self.layout.devfreq
        for name, value in (("min", min_hz), ("max", max_hz), ("cur", cur_hz)):
            if value is not None:
                write(d / f"{name}_freq", int(value))

    def set_gpu_load(self, permille: int) -> None:
        write(self.layout.gpu_dev / "load", permille)
        write(self.layout.gpu0 / "load", permille)

    def set_cpu_freq(self, cluster: int, cur_khz: int) -> None:
        write(self.layout.policy(cluster) / "scaling_cur_freq", int(cur_khz))

    def set_emc_rate(self, hz: int) -> None:
        write(self.layout.emc / "rate", int(hz))

    def set_temp(self, zone: str, celsius: float | None) -> None:
        """``None`` makes the zone's temp unreadable (EINVAL-like read error) as an idle GPU's is."""
        path = self._zone(zone) / "temp"
        if path.is_symlink() or path.exists():
            path.unlink()
        if celsius is None:
            path.symlink_to(path.parent / "does-not-exist")
        else:
            write(path, int(round(celsius * 1000)))

    def power_off_zone(self, zone: str) -> None:
        """The zone's power domain goes off: reading its temp fails with EAGAIN, as the kernel's does.

        On an Orin the CV/DLA zones (idle) and the GPU zone (rail-gated) fail ``read(2)`` with
        EAGAIN.  The stand-in is a FIFO that this board holds open for writing and never writes:
        a non-blocking read gets EAGAIN exactly as sysfs gives it.  Buffered Python I/O turns the
        kernel's EAGAIN into a TypeError; a blocking reader of the FIFO waits instead, until
        :meth:`close` (so jetson-stats' blocking reads must not meet such a zone).
        """
        path = self._zone(zone) / "temp"
        if path.is_symlink() or path.exists():
            path.unlink()
        os.mkfifo(path)
        # O_RDWR opens without waiting for a reader and counts as the writer that never writes.
        self._held.append(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))

    def close(self) -> None:
        """Let go of powered-off zones (a reader blocked on one then sees end of file)."""
        while self._held:
            os.close(self._held.pop())

    def add_oc_events(self, channel: int, count: int) -> None:
        path = self.layout.oc_hwmon / f"oc{channel}_event_cnt"
        write(path, int(read(path)) + count)

    def set_rail(self, label: str, millivolt: int, milliamp: int) -> None:
        for hwmon in self._ina_hwmons():
            for n in (1, 2, 3):
                if read(hwmon / f"in{n}_label") == label:
                    write(hwmon / f"in{n}_input", millivolt)
                    write(hwmon / f"curr{n}_input", milliamp)
                    return
        raise KeyError(label)

    def set_fan_pwm(self, pwm: int) -> None:
        write(self.layout.fan_hwmon / "pwm1", pwm)

    def clocks_locked(self) -> bool:
        online = orin.online_cpus(self.layout)
        cpu = all(
            read(self.layout.cpufreq(c) / "scaling_min_freq") == read(self.layout.cpufreq(c) / "scaling_max_freq")
            for c in online
        )
        gpu = self.gpu()
        return cpu and gpu["min"] == gpu["max"] and read(self.layout.emc / "mrq_rate_locked") == "1"

    def remove_gpu(self) -> None:
        """Early boot / non-Jetson: no GPU devfreq node."""
        self.layout.devfreq_class.unlink()

    def add_thermal_zone(self, kind: str, celsius: float) -> Path:
        """A thermal zone as its driver registers it: the next thermal_zoneN, linked in class/thermal."""
        index = next(n for n in itertools.count() if not (self.layout.thermal / f"thermal_zone{n}").exists())
        zone = self.layout.thermal / f"thermal_zone{index}"
        _put(zone / "type", kind)
        _put(zone / "temp", int(round(celsius * 1000)))
        _put(zone / "policy", "step_wise")
        _link(self.root / f"sys/class/thermal/thermal_zone{index}", zone)
        return zone

    def add_ina3221(self, addr: str, channels: list[tuple[str, int, int]]) -> Path:
        """An INA3221 on i2c-1 at ``addr`` as its driver registers it: the lowest free hwmonN,
        linked in class/hwmon; ``channels`` are (label, mV, mA)."""
        hwmon_class = self.root / "sys/class/hwmon"
        # Without listing class/hwmon: tests count the listings of the source under test.
        number = next(n for n in itertools.count() if not (hwmon_class / f"hwmon{n}").is_symlink())
        dev = self.root / "sys/devices/platform/bus@0/c240000.i2c/i2c-1" / addr
        hw = dev / "hwmon" / f"hwmon{number}"
        _put(hw / "name", "ina3221")
        for n, (label, mv, ma) in enumerate(channels, start=1):
            _put(hw / f"in{n}_label", label)
            _put(hw / f"in{n}_input", mv)
            _put(hw / f"curr{n}_input", ma)
            _put(hw / f"curr{n}_max", 20000)
            _put(hw / f"curr{n}_crit", 30000)
            _put(hw / f"curr{n}_max_alarm", 0)
            _put(hw / f"curr{n}_crit_alarm", 0)
        _put(dev / "name", "ina3221")  # the i2c device's own name file, which jtop matches
        _put(hw / "in7_label", "sum of shunt voltages")
        _put(hw / "in7_input", 0)
        _link(self.root / "sys/bus/i2c/devices" / addr, dev)
        _link(hwmon_class / hw.name, hw)
        return hw

    # ------------------------------------------------------------------ building

    def _zone(self, zone: str) -> Path:
        for path in sorted(self.layout.thermal.glob("thermal_zone*")):
            kind = read(path / "type")
            if kind == zone or kind.split("-")[0].split("_")[0] == zone:
                return path
        raise KeyError(zone)

    def _ina_hwmons(self) -> list[Path]:
        return [
            next((self.root / f"sys/bus/i2c/devices/{addr}/hwmon").resolve().glob("hwmon*"))
            for addr in ("1-0040", "1-0041")
        ]

    def _wrapper(self, tool: str) -> Path:
        """A per-board executable: bakes in the board root and a fast interpreter.

        The venv interpreter may sit under /root (mode 0700); an unprivileged user then
        falls back to ``python3`` on PATH, which is all the fakes need (stdlib only).
        """
        self.bin.mkdir(parents=True, exist_ok=True)
        path = self.bin / tool
        path.write_text(
            "#!/bin/sh\n"
            f"FAKE_JETSON_ROOT='{self.root}'\nexport FAKE_JETSON_ROOT\n"
            f"if [ -x '{sys.executable}' ]; then exec '{sys.executable}' -S '{FAKES_DIR / tool}' \"$@\"; fi\n"
            f"exec '{FAKES_DIR / tool}' \"$@\"\n"
        )
        path.chmod(0o755)
        return path

    def _build(self) -> None:
        lay = self.layout
        jp6 = lay.jetpack >= 6
        put, link = _put, _link

        # CPU: 12 cores in three clusters sharing a cpufreq policy each
        put(lay.cpu / "online", "0-11")
        put(lay.cpu / "possible", "0-11")
        for cluster in orin.CLUSTERS:
            pol = lay.policy(cluster)
            put(pol / "cpuinfo_min_freq", orin.CPU_FREQS_KHZ[0])
            put(pol / "cpuinfo_max_freq", orin.CPU_FREQS_KHZ[-1])
            put(pol / "cpuinfo_cur_freq", orin.CPU_FREQS_KHZ[-1])
            put(pol / "scaling_min_freq", orin.CPU_MIN_FREQ_KHZ)
            put(pol / "scaling_max_freq", orin.CPU_FREQS_KHZ[-1])
            put(pol / "scaling_cur_freq", 1190400)
            put(pol / "scaling_governor", "schedutil")
            put(pol / "scaling_available_governors", "conservative ondemand userspace powersave performance schedutil")
            put(pol / "scaling_available_frequencies", " ".join(map(str, orin.CPU_FREQS_KHZ)))
            put(pol / "related_cpus", " ".join(str(c) for c in range(cluster, cluster + 4)))
        for cpu in range(orin.CPUS):
            put(lay.cpu / f"cpu{cpu}" / "online", 1)
            link(lay.cpufreq(cpu), lay.policy(cpu - cpu % 4))
            for index, name in enumerate(("WFI", "c7")):
                put(lay.cpu / f"cpu{cpu}" / f"cpuidle/state{index}/name", name)
                put(lay.cpu / f"cpu{cpu}" / f"cpuidle/state{index}/disable", 0)
        put(self.root / "proc/stat", "cpu  0 0 0 0 0 0 0 0 0 0")

        # GPU devfreq (Hz), its device node, railgate and TPC mask
        d = lay.devfreq
        put(d / "cur_freq", orin.GPU_FREQS_HZ[0])
        put(d / "min_freq", orin.GPU_FREQS_HZ[0])
        put(d / "max_freq", orin.GPU_FREQS_HZ[-1])
        put(d / "available_frequencies", " ".join(map(str, orin.GPU_FREQS_HZ)))
        put(d / "governor", "nvhost_podgov")
        put(d / "available_governors", "userspace performance simple_ondemand nvhost_podgov")
        link(d / "device", lay.gpu_dev)
        link(lay.devfreq_class, d)
        # A device-tree property: the raw string with its NUL terminator, no newline (jetson-stats
        # 4.3 compares cat(...).rstrip("\0") with "gpu"; a "gpu\n" made it find no GPU).
        (lay.gpu_dev / "of_node").mkdir(parents=True, exist_ok=True)
        (lay.gpu_dev / "of_node/name").write_bytes(b"gpu\0" if jp6 else b"ga10b\0")
        put(lay.gpu_dev / "load", 0)
        for name, value in (("load", 0), ("railgate_enable", 1), ("tpc_pg_mask", 0)):
            put(lay.gpu0 / name, value)
        if jp6:
            for name in ("min_freq", "max_freq"):
                put(self.root / "sys/devices/platform/17000000.gpu/devfreq_dev" / name, 0)

        # EMC (debugfs: root only on a real board) and nvpmodel's cap
        for name, value in (("rate", orin.EMC_IDLE_HZ), ("min_rate", orin.EMC_MIN_HZ),
                            ("max_rate", orin.EMC_MAX_HZ), ("mrq_rate_locked", 0)):
            put(lay.emc / name, value)
        put(lay.emc_cap, orin.EMC_MAX_HZ)
        put(self.root / "sys/kernel/actmon_avg_activity/mc_all", 0)

        # thermal zones: GPU and CV read -256 when idle/railgated (reference section 4)
        names = (
            ["cpu-thermal", "gpu-thermal", "cv0-thermal", "cv1-thermal", "cv2-thermal",
             "soc0-thermal", "soc1-thermal", "soc2-thermal", "tj-thermal"]
            if jp6 else
            ["CPU-therm", "GPU-therm", "CV0-therm", "CV1-therm", "CV2-therm", "SOC0-therm",
             "SOC1-therm", "SOC2-therm", "tj-therm", "Tboard_tegra", "Tdiode_tegra"]
        )
        temps = {"cpu": 45.5, "gpu": -256, "cv0": -256, "cv1": -256, "cv2": -256,
                 "soc0": 44.0, "soc1": 45.0, "soc2": 44.5, "tj": 46.0, "Tboard": 33.0, "Tdiode": 36.0}
        for name in names:
            key = name.split("-")[0].split("_")[0]
            self.add_thermal_zone(name, temps[key if key in temps else key.lower()])

        # hwmon: fan (hwmon0), INA3221 power monitors (hwmon1, 2), soctherm over-current counters (hwmon3)
        put(lay.fan_hwmon / "name", "pwmfan")
        put(lay.fan_hwmon / "pwm1", 69)
        link(self.root / "sys/class/hwmon" / lay.fan_hwmon.name, lay.fan_hwmon)
        self.add_ina3221("1-0040", [("VDD_GPU_SOC", 4984, 1208), ("VDD_CPU_CV", 4984, 604),
                                    ("VIN_SYS_5V0", 4976, 912)])
        self.add_ina3221("1-0041", [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 4992, 206), ("NC", 0, 0)])
        put(lay.oc_hwmon / "name", "soctherm_oc")
        for n in (1, 2, 3):
            put(lay.oc_hwmon / f"oc{n}_event_cnt", 0)
            put(lay.oc_hwmon / f"oc{n}_throt_en", 1)
        link(self.root / "sys/class/hwmon" / lay.oc_hwmon.name, lay.oc_hwmon)

        # What jetson-stats' JTOP_TESTING mode reads besides sysfs proper (/fake_sys/stat is
        # its stand-in for /proc/stat; DMI is how it names an x86 "board").
        stat_lines = ["cpu  100 0 100 10000 0 0 0 0 0 0"] + [f"cpu{c} 10 0 10 1000 0 0 0 0 0 0" for c in range(orin.CPUS)]
        put(self.root / "sys/stat", "\n".join(stat_lines))
        put(self.root / "sys/devices/virtual/dmi/id/product_name", "FakeBoard")
        (self.root / "sys/class/power_supply").mkdir(parents=True, exist_ok=True)

        # nvpmodel's persistent status and config (the sysfs source reads mode names from it)
        put(lay.nvpmodel_status, f"pmode:{orin.DEFAULT_MODE:04d} fmode:cool")
        conf = [f"< POWER_MODEL ID={mid} NAME={row[0]} >\nCPU_ONLINE CORE_0 1\n" for mid, row in orin.MODES.items()]
        put(lay.nvpmodel_conf, "".join(conf) + f"< PM_CONFIG DEFAULT={orin.DEFAULT_MODE} >")

