"""The jtop source with the REAL jetson-stats client and service (in a mount namespace).

Skipped, with the reason, where the service cannot run (not root, no unshare).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from fakes.board import FakeBoard
from fakes.jtop_service import run_probe, unavailable_reason

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os, signal, subprocess, sys, time
sys.path[:0] = [os.environ["REPO"], os.path.join(os.environ["REPO"], "tests")]
from ishowtts_edge.config import TelemetryConfig
from ishowtts_edge.telemetry import TelemetrySampler
from fakes.orin import Layout, write

root = os.environ["BOARD_ROOT"]
cfg = TelemetryConfig(interval_s=0.5, sysfs_root=root, sources=["jtop", "sysfs"],
                      reconnect_min_s=0.5, reconnect_max_s=1.0)
sampler = TelemetrySampler(cfg)

def wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sample = sampler.latest()
        if sample is not None and pred(sample):
            return sample
        time.sleep(0.05)
    print(json.dumps({"step": "timeout", "what": what, "status": sampler.status()}), flush=True)
    sys.exit(3)

def tree(pid):
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                pids += tree(int(child))
    return pids

def emit(step, sample):
    print(json.dumps({"step": step, "t": round(time.monotonic() - T0, 2), "sample": sample.to_dict(), "status": sampler.status()}), flush=True)

T0 = time.monotonic()
sampler.start()
service = None
try:
    emit("first", wait(lambda s: s.source == "jtop", 30, "first jtop sample"))
    write(Layout(root).devfreq / "cur_freq", 612000000)
    emit("lowered", wait(lambda s: s.source == "jtop" and s.gpu_cur_mhz == 612.0, 30, "lowered clock"))
    # the service forks its data process: kill the whole tree, as systemd's KillMode would
    for pid in reversed(tree(int(os.environ["JTOP_SERVICE_PID"]))):
        os.kill(pid, signal.SIGKILL)
    emit("fallback", wait(lambda s: s.source == "sysfs", 30, "fallback to sysfs"))
    service = subprocess.Popen(os.environ["JTOP_SERVICE_CMD"], shell=True)
    emit("back", wait(lambda s: s.source == "jtop", 30, "jtop again"))
finally:
    sampler.stop()
    if service is not None:
        service.terminate()
        service.wait(10)
"""


def test_real_jtop_service_feeds_the_sampler_and_its_death_is_survived():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="ihwt-jtop-"))
    try:
        board = FakeBoard(base, power_mode="MODE_50W")
        done = run_probe(board, base / "ns", PROBE, {"REPO": str(REPO), "BOARD_ROOT": str(board.root)})
        log = (base / "ns" / "service.log").read_text(errors="replace") if (base / "ns" / "service.log").exists() else ""
        steps = {}
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                steps[record["step"]] = record
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- service log ---\n{log[-3000:]}"
    finally:
        shutil.rmtree(base, ignore_errors=True)

    first = steps["first"]["sample"]
    assert first["source"] == "jtop"
    assert (first["gpu_min_mhz"], first["gpu_max_mhz"], first["gpu_hw_max_mhz"]) == (306.0, 816.0, 1300.5)
    assert first["cpu_cur_mhz"] == [1190.4] * 12
    assert first["emc_cur_mhz"] == 2133.0
    assert first["temperatures_c"]["tj"] == 46.0 and "gpu" not in first["temperatures_c"]  # -256: offline
    assert first["nvpmodel_id"] == 3 and first["nvpmodel_name"] == "MODE_50W"
    assert first["power_mw"] == pytest.approx((4984 * 1208 + 4984 * 604 + 4976 * 912 + 4992 * 206) / 1000, abs=5)
    assert steps["lowered"]["sample"]["gpu_cur_mhz"] == 612.0
    fallback = steps["fallback"]["status"]
    assert fallback["source"] == "sysfs" and "jtop" in fallback["source_errors"]
    back = steps["back"]["status"]
    assert back["source"] == "jtop"
    # A reconnect from the sampler thread's cached (dead) manager connection fails with
    # BrokenPipeError until that connection is dropped; JtopSource connects from a fresh thread.
    assert "BrokenPipe" not in (back["last_error"] or "")
