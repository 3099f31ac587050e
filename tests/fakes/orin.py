"""AGX Orin (p3701-0000) facts shared by the fake board and the fake CLIs.

Stdlib only: the fake ``nvpmodel``/``jetson_clocks`` scripts import this from their
own directory and may run under a bare ``python3`` as an unprivileged user.
Sources: /work/shared/reference/jetson/README.md sections 3 and 4.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# id: (name, cores online, TPC_PG_MASK, CPU max kHz, GPU max Hz, EMC cap Hz); -1 = no cap
MODES = {
    0: ("MAXN", 12, 0, -1, -1, -1),
    1: ("MODE_15W", 4, 248, 1113600, 408000000, 2133000000),
    2: ("MODE_30W", 8, 240, 1728000, 612000000, -1),
    3: ("MODE_50W", 12, 0, 1497600, 816000000, -1),
}
DEFAULT_MODE = 2  # PM_CONFIG DEFAULT=2 on the devkit
CPU_MIN_FREQ_KHZ = 729600  # nvpmodel's CPU MIN_FREQ for every mode
CPU_FREQS_KHZ = [
    115200, 192000, 268800, 345600, 422400, 499200, 576000, 652800, 729600, 806400, 883200, 960000,
    1036800, 1113600, 1190400, 1267200, 1344000, 1420800, 1497600, 1574400, 1651200, 1728000,
    1804800, 1881600, 1958400, 2035200, 2112000, 2188800, 2201600,
]
GPU_FREQS_HZ = [
    306000000, 408000000, 510000000, 612000000, 714000000, 816000000, 918000000, 1020000000,
    1122000000, 1224000000, 1300500000,
]
EMC_MIN_HZ, EMC_MAX_HZ, EMC_IDLE_HZ = 204000000, 3199000000, 2133000000
CPUS = 12
CLUSTERS = (0, 4, 8)  # CPU_A78_0/1/2: cpufreq policies
TPCS = 16


def mode_by_name(name: str) -> int | None:
    return next((mid for mid, row in MODES.items() if row[0] == name), None)


class Layout:
    """Paths of one fake board.  ``root`` stands for ``/``; sysfs lives under root/sys."""

    def __init__(self, root: Path | str, jetpack: int | None = None):
        self.root = Path(root)
        self.state_file = self.root / ".fake" / "board.json"
        if jetpack is None:
            jetpack = self.state().get("jetpack", 6)
        self.jetpack = jetpack
        sys_ = self.root / "sys"
        self.sys = sys_
        if jetpack >= 6:
            self.gpu_dev = sys_ / "devices/platform/bus@0/17000000.gpu"
            self.gpu0 = sys_ / "devices/platform/gpu.0"
            self.emc_cap = sys_ / "kernel/nvpmodel_clk_cap/emc"
            gpu_name = "17000000.gpu"
        else:
            self.gpu_dev = sys_ / "devices/17000000.ga10b"
            self.gpu0 = sys_ / "devices/gpu.0"
            self.emc_cap = sys_ / "kernel/nvpmodel_emc_cap/emc_iso_cap"
            gpu_name = "17000000.ga10b"
        self.devfreq = self.gpu_dev / "devfreq" / gpu_name
        self.devfreq_class = sys_ / "class/devfreq" / gpu_name
        self.cpu = sys_ / "devices/system/cpu"
        self.emc = sys_ / "kernel/debug/bpmp/debug/clk/emc"
        self.thermal = sys_ / "devices/virtual/thermal"
        self.nvpmodel_status = self.root / "var/lib/nvpmodel/status"
        self.nvpmodel_conf = self.root / "etc/nvpmodel.conf"
        self.fan_hwmon = sys_ / "devices/platform/pwm-fan/hwmon/hwmon0"
        self.oc_hwmon = sys_ / "devices/platform/soctherm-oc-event/hwmon/hwmon3"

    def cpufreq(self, cpu: int) -> Path:
        return self.cpu / f"cpu{cpu}" / "cpufreq"

    def policy(self, cluster: int) -> Path:
        """cpufreq policy shared by a cluster's cores (cpuN/cpufreq links to it)."""
        return self.cpu / "cpufreq" / f"policy{cluster}"

    # -- state shared between the fakes (options and nothing that sysfs already holds)

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def update_state(self, **changes) -> None:
        data = self.state()
        data.update(changes)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_file)


def read(path: Path) -> str:
    return path.read_text().strip()


def write(path: Path, value) -> None:
    path.write_text(f"{value}\n")


def online_cpus(layout: Layout) -> list[int]:
    return [c for c in range(CPUS) if read(layout.cpu / f"cpu{c}" / "online") == "1"]


def cpu_list(cpus: list[int]) -> str:
    """0-7 style, as /sys/devices/system/cpu/online prints it."""
    ranges, start = [], None
    for index, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if index + 1 == len(cpus) or cpus[index + 1] != cpu + 1:
            ranges.append(f"{start}-{cpu}" if cpu != start else f"{cpu}")
            start = None
    return ",".join(ranges)


def settle(layout: Layout) -> None:
    """What the kernel's governors do after limits change: cur stays within [min, max]."""
    for cluster in CLUSTERS:
        freq = layout.policy(cluster)
        lo, hi, cur = (int(read(freq / f"scaling_{k}_freq")) for k in ("min", "max", "cur"))
        write(freq / "scaling_cur_freq", min(max(cur, lo), hi))
    lo, hi, cur = (int(read(layout.devfreq / f"{k}_freq")) for k in ("min", "max", "cur"))
    write(layout.devfreq / "cur_freq", min(max(cur, lo), hi))


def apply_mode(layout: Layout, mode_id: int) -> None:
    """What a live ``nvpmodel -m`` writes: caps, CPU/GPU minimums back to the mode's, status file."""
    name, cores, mask, cpu_max, gpu_max, emc_cap = MODES[mode_id]
    for cpu in range(CPUS):
        write(layout.cpu / f"cpu{cpu}" / "online", 1 if cpu < cores else 0)
    write(layout.cpu / "online", cpu_list(list(range(cores))))
    for cluster in CLUSTERS:
        freq = layout.cpufreq(cluster)
        hw_max = int(read(freq / "cpuinfo_max_freq"))
        write(freq / "scaling_max_freq", hw_max if cpu_max < 0 else min(cpu_max, hw_max))
        write(freq / "scaling_min_freq", CPU_MIN_FREQ_KHZ)
    write(layout.devfreq / "max_freq", GPU_FREQS_HZ[-1] if gpu_max < 0 else gpu_max)
    write(layout.devfreq / "min_freq", GPU_FREQS_HZ[0])
    write(layout.gpu0 / "tpc_pg_mask", mask)
    write(layout.emc_cap, EMC_MAX_HZ if emc_cap < 0 else emc_cap)
    write(layout.nvpmodel_status, f"pmode:{mode_id:04d} fmode:cool")
    settle(layout)


def current_mode(layout: Layout) -> int:
    text = read(layout.nvpmodel_status)
    return int(text.split()[0].split(":")[1])
