"""A stand-in for jetson-stats' ``jtop`` client, reading a FakeBoard.

The real client and service are exercised in test_telemetry_jtop_service.py (a mount
namespace, root only, a few seconds).  This stand-in keeps the fast unit tests of the
error paths (version mismatch, service death and restart, mapping of every field)
independent of root and namespaces.  It reproduces the client's observable behaviour
from reference section 1: start() errors with jtop's own JtopException texts, ok()
blocking for the next sample and raising ``Lost connection with jtop server`` after the
service dies, and the property shapes and units (kHz, mW, degC, -256 for offline zones)
that jetson-stats 7.2.2 returned against this same fake board.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from jtop import JtopException

from . import orin
from .board import FakeBoard

NOT_ACTIVE = "The jtop.service is not active. Please run:\nsudo jtop --install-service"
NO_ACCESS = "I can't access jtop.service.\nPlease logout or reboot this board."
LOST = "Lost connection with jtop server"


class FakeJtopService:
    """The root service's state: running or not, its version, and a kill switch."""

    def __init__(self, board: FakeBoard, version: str = "7.2.2"):
        self.board = board
        self.version = version
        self.running = True
        self.permission = True
        self.generation = 0  # bumps on every kill, so old clients see a lost connection
        self.clients: list[FakeJtop] = []
        #: Cleared: the service accepts connections and never answers (a hung jtop.service);
        #: start() blocks until it is set again, and close() does not end it (as in jetson-stats).
        self.answering = threading.Event()
        self.answering.set()
        #: True: connected clients get no data, so ok() is False after its wait (jetson-stats'
        #: ok() when the service's loop stalls).
        self.stalled = False
        self._find_gpus()

    def _find_gpus(self) -> None:
        #: jetson-stats' GPUService lists /sys/class/devfreq once, when the service starts: one
        #: started before the GPU's node appeared reports no GPU until it restarts.
        self.has_gpu = self.board.layout.devfreq_class.exists()

    def kill(self) -> None:
        self.running = False
        self.generation += 1

    def restart(self) -> None:
        self.running = True
        self._find_gpus()

    def factory(self, interval: float) -> "FakeJtop":
        client = FakeJtop(self, interval)
        self.clients.append(client)
        return client


class _NVPModel:
    def __init__(self, mode_id: int, models: list[str]):
        self.id = mode_id
        self.models = models
        self.name = models[mode_id]

    def __str__(self) -> str:
        return self.name


class _JetsonClocks:
    def __init__(self, enabled: bool):
        self._enabled = enabled
        self.status = "running" if enabled else "inactive"

    def __bool__(self) -> bool:
        return self._enabled


def _read(path: Path) -> str:
    return path.read_text().strip()


class FakeJtop:
    def __init__(self, service: FakeJtopService, interval: float = 1.0):
        self.service = service
        self._interval = interval
        self._generation = None
        self._closed = False
        self._data: dict = {}
        self._last = 0.0
        self._lock = threading.Lock()

    # -- life cycle, as jtop.jtop

    def start(self) -> None:
        self.service.answering.wait()
        if not self.service.running:
            raise JtopException(NOT_ACTIVE)
        if not self.service.permission:
            raise JtopException(NO_ACCESS)
        client = "7.2.2"
        if self.service.version.split(".")[:2] != client.split(".")[:2]:
            raise JtopException(
                f"Mismatch version jtop service: [{self.service.version}] and client: [{client}]. Please run:\n\n"
                "sudo jtop --install-service"
            )
        self._generation = self.service.generation
        self._refresh()
        # jetson-stats' start() ends with `self._running = True`: a close() that came while it
        # was blocked (its `_running = False`) does not keep the client from running.
        self._closed = False

    def ok(self, spin: bool = False) -> bool:
        if self._closed:
            return False
        if not spin:
            wait = self._last + self._interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if self.service.generation != self._generation:
            raise JtopException(LOST)
        if self.service.stalled:
            return False
        self._refresh()
        return True

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- data, shaped like jetson-stats 7.2.2

    def _refresh(self) -> None:
        lay = self.service.board.layout
        online = orin.online_cpus(lay)
        cpus = []
        for cpu in range(orin.CPUS):
            if cpu not in online:
                cpus.append({"online": False, "model": "ARMv8 Processor rev 1 (v8l)"})
                continue
            f = lay.cpufreq(cpu)
            cpus.append({
                "online": True,
                "governor": _read(f / "scaling_governor"),
                "freq": {k: int(_read(f / f"scaling_{k}_freq")) for k in ("min", "max", "cur")},
                "info_freq": {k: int(_read(f / f"cpuinfo_{k}_freq")) for k in ("min", "max", "cur")},
                "idle_state": {"WFI": 0, "c7": 0},
                "user": 1.0, "nice": 0.0, "system": 1.0, "idle": 98.0,
                "model": "ARMv8 Processor rev 1 (v8l)",
            })
        d = lay.devfreq
        gpu = {} if not self.service.has_gpu else {
            "gpu": {
                "type": "integrated",
                "status": {
                    "railgate": _read(lay.gpu0 / "railgate_enable") == "1",
                    "tpc_pg_mask": _read(lay.gpu0 / "tpc_pg_mask") != "0",
                    "3d_scaling": True,
                    "load": int(_read(lay.gpu_dev / "load")) / 10,
                },
                "freq": {
                    "governor": _read(d / "governor"),
                    **{k: int(_read(d / f"{k}_freq")) // 1000 for k in ("cur", "max", "min")},
                    "GPC": [int(_read(d / "cur_freq")) // 1000] * 2,
                },
            }
        }
        e = lay.emc
        emc = {
            "online": True,
            "cur": int(_read(e / "rate")) // 1000,
            "max": int(_read(e / "max_rate")) // 1000,
            "min": int(_read(e / "min_rate")) // 1000,
            "override": int(_read(e / "mrq_rate_locked")),
            "val": 0,
        }
        temperature = {}
        for zone in sorted(lay.thermal.glob("thermal_zone*"), key=lambda p: int(p.name[12:])):
            name = _read(zone / "type").split("-")[0].split("_")[0]
            try:
                value = int(_read(zone / "temp")) / 1000
            except OSError:
                value = -256.0
            temperature[name] = {"temp": value, "online": value > -256}
        rails = {}
        for hwmon in self.service.board._ina_hwmons():
            for n in (1, 2, 3):
                label = _read(hwmon / f"in{n}_label")
                if "NC" in label:
                    continue
                volt, curr = int(_read(hwmon / f"in{n}_input")), int(_read(hwmon / f"curr{n}_input"))
                power = volt * curr // 1000
                rails[label] = {"type": "INA3221", "volt": volt, "curr": curr, "power": power, "avg": power,
                                "online": True, "warn": 20000, "crit": 30000}
        tot = {k: sum(r[k] for r in rails.values()) for k in ("volt", "curr", "power", "avg")}
        pwm = int(_read(lay.fan_hwmon / "pwm1"))
        mode = orin.current_mode(lay)
        models = [orin.MODES[i][0] for i in sorted(orin.MODES)]
        with self._lock:
            self._data = {
                "cpu": {"total": {"user": 1.0, "nice": 0.0, "system": 1.0, "idle": 98.0}, "cpu": cpus},
                "gpu": gpu,
                "memory": {"RAM": {}, "SWAP": {}, "EMC": emc},
                "temperature": temperature,
                "power": {"rail": rails, "tot": tot},
                "fan": {"pwmfan": {"profile": "quiet", "governor": "pid", "control": "close_loop",
                                   "speed": [round(pwm * 100 / 255, 1)], "rpm": [pwm * 20]}},
                "nvpmodel": _NVPModel(mode, models),
                "jetson_clocks": _JetsonClocks(self.service.board.clocks_locked()),
            }
        self._last = time.monotonic()

    def _get(self, key: str):
        with self._lock:
            return self._data[key]

    cpu = property(lambda self: self._get("cpu"))
    gpu = property(lambda self: self._get("gpu"))
    memory = property(lambda self: self._get("memory"))
    temperature = property(lambda self: self._get("temperature"))
    power = property(lambda self: self._get("power"))
    fan = property(lambda self: self._get("fan"))
    nvpmodel = property(lambda self: self._get("nvpmodel"))
    jetson_clocks = property(lambda self: self._get("jetson_clocks"))
