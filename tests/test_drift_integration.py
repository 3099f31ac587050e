"""The running daemon on the fake board: GPU clock falls, syntheses really slow down,
the alert is raised with cause clock_drift and published, the real hwctl re-applies
jetson_clocks, the clock recovers and the alert clears.

Nothing fakes the RTF: the engine's clock emulation (engine.emulate_clock_devfreq)
sleeps after every sampling step in proportion to max_freq / cur_freq of the fake GPU
devfreq node, so a lowered clock makes synthesis slower as a real GPU would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import zmq
from fakes.board import FakeBoard
from fakes.hwctl_process import HwctlProcess, board_daemon_toml, require_root, write_hwctl_config

from conftest import REPO, DaemonProcess, NotifySocket
from ishowtts_edge.client import Client


def drain(sub: zmq.Socket, into: list[tuple[str, dict]]) -> None:
    while sub.poll(0):
        topic, body = sub.recv_multipart()
        into.append((topic.decode(), json.loads(body)))


def favour(pid: int) -> None:
    """Let a timed process run before others on a shared machine: the monitor compares wall times
    across a minute, and other work starting meanwhile must not read as a slowdown or its end.
    (The daemons here also run one torch thread: OpenMP workers spinning for a busy core made
    timings erratic.)  Best effort: without the privilege to raise priority the test runs as it is."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), -20)
        except (PermissionError, ProcessLookupError):
            pass


def test_clock_drop_raises_clock_drift_remediates_and_clears(world_tmp, demo_cache):
    require_root()
    board = FakeBoard(world_tmp)
    hwctl = HwctlProcess(write_hwctl_config(world_tmp / "hwctl.toml", board, world_tmp / "hwstate"))
    config = world_tmp / "edge.toml"
    config.write_text(
        board_daemon_toml(board, hwctl.socket)
        + f"""interval_s = 0.1

[engine]
emulate_clock_devfreq = "{board.layout.devfreq}"

[monitor]
window_count = 12
baseline_samples = 4
min_samples = 3
recent_count = 3
raise_after = 2
clear_after = 2
# Only the clock drop must alert, not the noise of a shared 2-core CI machine.
slowdown_threshold = 0.6
slowdown_error_threshold = 3.0
cv_threshold = 5.0
cv_error_threshold = 10.0
telemetry_confirm = 2
remediate_min_interval_s = 0
"""
    )
    notify = NotifySocket(world_tmp / "notify.sock")
    proc = DaemonProcess(world_tmp, demo_cache, config=config, NOTIFY_SOCKET=str(notify.path), OMP_NUM_THREADS="1")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    events: list[tuple[str, dict]] = []
    try:
        notify.collect(lambda m: "READY=1" in m, timeout=180)
        favour(proc.proc.pid)
        sub.connect(f"ipc://{world_tmp / 'run' / 'events.sock'}")
        with Client(proc.endpoint, timeout_s=120) as client:
            status = client.status()
            # Preflight went through the real hwctl: clocks were locked before warm-up.
            assert status["hardware"]["state"] in ("applied", "ok"), status["hardware"]
            assert board.clocks_locked()
            assert status["telemetry"]["source"] == "sysfs"
            locked_max = board.gpu()["max"]

            def say(i: int) -> float:
                out = client.synthesize("The clock test sentence.", seed=i)
                drain(sub, events)
                return out.header["synthesis_seconds"]

            healthy = [say(i) for i in range(8)]  # the baseline is learned at locked clocks
            assert client.status()["monitor"]["baseline"] is not None

            # The GPU clock falls to a third of its locked maximum.
            board.set_gpu_freq(cur_hz=locked_max // 3)
            slow, raised = [], None
            for i in range(30):
                slow.append(say(100 + i))
                raised = next((e for t, e in events if t == "alert.raised"), None)
                if raised:
                    break
            assert raised is not None, f"no alert after {len(slow)} slow requests; events={events}\n{proc.log()[-3000:]}"
            assert sorted(slow)[len(slow) // 2] > 2 * sorted(healthy)[len(healthy) // 2]  # it really slowed down
            alert = raised["data"]["alert"] if "alert" in raised["data"] else raised["data"]
            assert alert["cause"] == "clock_drift", raised

            # The remediator asks the real hwctl to apply again; jetson_clocks puts the clock back.
            deadline = time.monotonic() + 60
            while board.gpu()["cur"] < locked_max and time.monotonic() < deadline:
                time.sleep(0.1)
            assert board.gpu()["cur"] == locked_max, "hwctl did not restore the clock"

            def outcomes() -> list[str]:
                drain(sub, events)
                return [e["data"].get("outcome") for t, e in events if t == "remediation"]

            while "applied" not in outcomes() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert outcomes()[:2] == ["applying", "applied"], outcomes()

            cleared = None
            for i in range(30):
                say(200 + i)
                cleared = next((e for t, e in events if t == "alert.cleared"), None)
                if cleared:
                    break
            assert cleared is not None, f"alert never cleared; events={[t for t, _ in events]}"

            status = client.status()
            assert not status["monitor"]["active_alerts"]
            # Only the drift: no spurious clocks_off from the seconds before preflight locked the clocks.
            assert {item["alert"]["cause"] for item in status["monitor"]["history"]} == {"clock_drift"}

        log = proc.log()
        assert any(line.startswith(("<4>", "<3>")) and "cause=clock_drift" in line for line in log.splitlines()), log[-3000:]
        # systemctl status showed it while it was active (datagrams wait in the socket buffer).
        notify.collect(lambda m: any(x.startswith("STATUS=") and "clock_drift" in x for x in m), timeout=10)
        human = subprocess.run(
            [sys.executable, "-m", "ishowtts_edge.cli", "--endpoint", proc.endpoint, "status"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=proc.env,
        )
        assert "clock_drift" in human.stdout  # the history line
    finally:
        sub.close(linger=0)
        proc.stop()
        notify.close()
        hwctl.stop()


def test_alert_raised_without_clock_management_clears_soon_after_the_board_recovers(world_tmp, demo_cache):
    """Hardware management off (a desktop GPU, or an owner who turned it off): the alert is raised
    by the window median alone and jitter is not judged, so recovery must not wait for the window
    median nor for a jitter this CPU never reaches (cv_threshold is set far below it here).
    The slowdown is five times the step time, and only a doubling counts, so that other work on
    a shared machine cannot pass for one or hide the recovery."""
    devfreq = world_tmp / "devfreq"
    devfreq.mkdir()
    (devfreq / "max_freq").write_text("900000000\n")
    (devfreq / "cur_freq").write_text("900000000\n")
    config = world_tmp / "edge.toml"
    config.write_text(
        f"""[hardware]
enabled = false

[engine]
emulate_clock_devfreq = "{devfreq}"

[monitor]
window_count = 16
baseline_samples = 6
min_samples = 4
recent_count = 4
raise_after = 2
clear_after = 2
unmanaged_slowdown_threshold = 1.0
cv_threshold = 0.005
"""
    )
    proc = DaemonProcess(world_tmp, demo_cache, config=config, OMP_NUM_THREADS="1")
    sent = 0
    try:
        proc.wait_ready()
        favour(proc.proc.pid)
        with Client(proc.endpoint, timeout_s=120) as client:

            def say() -> list[dict]:
                """One synthesis; the monitor's active alerts once it has recorded it."""
                nonlocal sent
                client.synthesize("The recovery test sentence.", seed=sent)
                sent += 1
                deadline = time.monotonic() + 30
                while True:  # the monitor records after the reply is sent
                    monitor = client.status()["monitor"]
                    if monitor["records_total"] >= sent or time.monotonic() > deadline:
                        return monitor["active_alerts"]
                    time.sleep(0.02)

            for _ in range(12):  # learn the baseline, then fill most of the window
                assert say() == []
            assert client.status()["monitor"]["baseline"]["source"] == "learned"

            # Every sampling step now takes five times as long.
            (devfreq / "cur_freq").write_text("180000000\n")
            for slow in range(1, 31):
                active = say()
                if active:
                    break
            assert active, f"no alert after {slow} slow requests\n{proc.log()[-3000:]}"
            assert active[0]["kind"] == "rtf" and active[0]["figures"]["slowdown"] > 1.0, active

            (devfreq / "cur_freq").write_text("900000000\n")
            cfg = {"recent_count": 4, "clear_after": 2}
            for healthy in range(1, cfg["recent_count"] + cfg["clear_after"] + 1):
                active = say()
                if not active:
                    break
            assert not active, (f"alert still active after {healthy} healthy requests: "
                                f"{client.status()['monitor']['window']}")
            history = client.status()["monitor"]["history"]
            assert [item["action"] for item in history] == ["raised", "cleared"]
    finally:
        proc.stop()
