"""Daemon life cycle against a real NOTIFY_SOCKET: start, READY, watchdog, reload, graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, DaemonProcess, NotifySocket
from ishowtts_edge.client import Client, ClientError


def _index(messages: list[str], prefix: str) -> int:
    for i, m in enumerate(messages):
        if m.startswith(prefix):
            return i
    raise AssertionError(f"{prefix!r} never sent; got {messages}")


def test_notify_order_watchdog_and_graceful_stop(tmp_path, demo_cache):
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = DaemonProcess(
        tmp_path,
        demo_cache,
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="400000",  # ping every 0.2 s
        ISHOWTTS_EDGE_HARDWARE__ENABLED="false",
    )
    try:
        msgs = notify.collect(lambda m: "READY=1" in m, timeout=240)
        ready = _index(msgs, "READY=1")
        assert _index(msgs, "EXTEND_TIMEOUT_USEC=") < ready
        # After READY: watchdog pings keep coming while the daemon serves.
        before = len(msgs)
        msgs = notify.collect(lambda m: sum(x == "WATCHDOG=1" for x in m[before:]) >= 3, timeout=10)
        status_lines = [m for m in msgs if m.startswith("STATUS=")]
        assert any("ready" in s or "degraded" in s for s in status_lines)
        # READY=1 came after one real request went through our own socket, unmonitored.
        with Client(proc.endpoint, timeout_s=10) as c:
            status = c.status()
        assert status["self_test"]["ok"] is True and status["self_test"]["voice"] == "demo"
        assert status["requests"]["requests"].get("synthesize") == 1
        assert status["monitor"]["records_total"] == 0, status["monitor"]
        from ishowtts_edge.status import render

        assert "  self-test: passed in " in render(status)

        # A synthesis in flight when SIGTERM arrives still gets its reply.
        result: dict = {}

        def synth() -> None:
            try:
                with Client(proc.endpoint, timeout_s=300) as c:
                    result["out"] = c.synthesize(" ".join(["Finish this sentence before stopping."] * 4), seed=1)
            except ClientError as exc:
                result["err"] = exc

        t = threading.Thread(target=synth)
        t.start()
        with Client(proc.endpoint, timeout_s=10) as c:
            for _ in range(500):
                if c.status()["queue"]["pending"]:
                    break
        proc.proc.send_signal(signal.SIGTERM)
        msgs = notify.collect(lambda m: "STOPPING=1" in m, timeout=30)
        assert _index(msgs, "STOPPING=1") > _index(msgs, "READY=1")
        t.join(300)
        assert "out" in result, f"in-flight request lost: {result}"
        assert proc.proc.wait(60) == 0
        assert not Path(proc.endpoint[len("ipc://"):]).exists(), "socket file left behind"
    finally:
        proc.stop()
        notify.close()


def test_sighup_reloads_voices_without_reloading_model(tmp_path, demo_cache):
    import numpy as np
    import soundfile as sf

    config = tmp_path / "edge.toml"
    config.write_text("[hardware]\nenabled = false\nhelper_timeout_s = 30\n")  # an old key name
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = DaemonProcess(tmp_path, demo_cache, config=config, NOTIFY_SOCKET=str(notify.path))
    try:
        notify.collect(lambda m: "READY=1" in m, timeout=240)
        assert "config key renamed: the old name still works, for now old=hardware.helper_timeout_s " \
               "new=hardware.hwctl_timeout_s" in proc.log()
        with Client(proc.endpoint, timeout_s=10) as c:
            before = {v["id"] for v in c.voices()}
            warm_before = c.status()["warmup"]
        voice_dir = tmp_path / "alice"
        voice_dir.mkdir()
        sr = 24000
        t = np.arange(sr * 2) / sr
        sf.write(voice_dir / "ref.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype("float32"), sr)
        (voice_dir / "ref.txt").write_text("Alice speaking.")
        # [server] is built into the socket at start: a reload names it and keeps the running limits.
        # The same [hardware] under the new key name is no change.
        config.write_text(f'[hardware]\nenabled = false\nhwctl_timeout_s = 30\n\n[server]\nmax_text_chars = 10\n\n[voices.alice]\ndir = "{voice_dir}"\n')
        mark = len(notify.messages)
        proc.proc.send_signal(signal.SIGHUP)
        msgs = notify.collect(lambda m: "READY=1" in m[mark:], timeout=60)
        assert _index(msgs[mark:], "RELOADING=1") < _index(msgs[mark:], "READY=1")
        with Client(proc.endpoint, timeout_s=60) as c:
            after = {v["id"] for v in c.voices()}
            assert after == before | {"alice"}
            assert c.status()["warmup"] == warm_before  # the model was not warmed up again
            out = c.synthesize("Now with Alice, longer than ten.", voice="alice", seed=1)
            assert out.header["voice"] == "alice"
        assert "<4>daemon: reload: [server] changes need a restart; they are ignored until then" in proc.log()
        assert "[voices]" not in proc.log() and "[hardware] changes" not in proc.log()

        # A broken config on reload: refused, the running one kept, and READY=1 sent again
        # (without it systemd would leave the unit "reloading" until its timeout).
        config.write_text("[hardware]\nenabled = false\n\n[server]\nmax_queue = -3\n")
        mark = len(notify.messages)
        proc.proc.send_signal(signal.SIGHUP)
        msgs = notify.collect(lambda m: "READY=1" in m[mark:], timeout=60)
        assert _index(msgs[mark:], "RELOADING=1") < _index(msgs[mark:], "READY=1")
        assert "<3>daemon: reload refused, keeping the running configuration" in proc.log()
        assert "<3>  server.max_queue: " in proc.log()
        with Client(proc.endpoint, timeout_s=60) as c:
            assert {v["id"] for v in c.voices()} == after
            assert c.synthesize("Still Alice.", voice="alice", seed=1).header["voice"] == "alice"
    finally:
        proc.stop()
        notify.close()


def test_invalid_config_fails_fast_naming_file_and_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[engine]\nnfe_step = "many"\n[monitor]\ncv_treshold = 0.1\n')
    r = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "--config", str(config), "serve"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert r.returncode == 78
    assert str(config) in r.stderr
    assert "engine.nfe_step" in r.stderr
    assert "monitor.cv_treshold: unknown key" in r.stderr


@pytest.mark.parametrize(
    "section, expected",
    [
        ('[server]\nendpoint = "ipc://"', "server.endpoint: Value error, empty ipc path"),
        ('[server]\nendpoint = "tcp://127.0.0.1:70000"', "server.endpoint: Value error, tcp port '70000'"),
        ('[server]\nendpoint = "tcp://127.0.0.1"', "server.endpoint: Value error, a tcp endpoint is tcp://HOST:PORT"),
        ('[server]\nevents_endpoint = "ipc://events.sock"', "server.events_endpoint: Value error, ipc path 'events.sock' must be absolute"),
        (f'[server]\nevents_endpoint = "ipc:///tmp/{"e" * 110}.sock"', "server.events_endpoint: Value error, ipc path is 120 bytes"),
        (f'[paths]\nruntime_dir = "/tmp/{"r" * 100}"', "paths.runtime_dir: ipc path is 114 bytes"),
        (f'[hardware]\nhwctl_socket = "/run/{"h" * 110}.sock"', "hardware.hwctl_socket: Value error, socket path is 120 bytes"),
    ],
)
def test_endpoint_that_cannot_be_bound_as_written_fails_fast_naming_the_key(tmp_path, section, expected):
    config = tmp_path / "endpoint.toml"
    config.write_text(section + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "--config", str(config), "serve"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert r.returncode == 78, r.stderr
    assert str(config) in r.stderr and expected in r.stderr
    assert "Traceback" not in r.stderr


def test_toml_syntax_error_is_reported(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("[engine\n")
    r = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "--config", str(config), "serve"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert r.returncode == 78 and str(config) in r.stderr


def test_second_instance_is_refused(daemon):
    runtime = Path(daemon.endpoint[len("ipc://"):]).parent
    env = dict(daemon.env)
    r = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "serve"],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert r.returncode == 75
    assert str(runtime / "daemon.lock") in r.stderr
    with Client(daemon.endpoint, timeout_s=10) as c:
        assert c.ping()["pong"]


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5599", "tcp://192.168.1.4:5599"])
def test_non_loopback_tcp_needs_explicit_permission(tmp_path, endpoint):
    from ishowtts_edge.config import ConfigError, load_settings

    config = tmp_path / "c.toml"
    config.write_text(f'[server]\nendpoint = "{endpoint}"\n')
    with pytest.raises(ConfigError, match="allow_remote"):
        load_settings(config)
    config.write_text(f'[server]\nendpoint = "{endpoint}"\nallow_remote = true\n')
    assert load_settings(config).endpoint == endpoint


def _ready_but_degraded_and_answering(proc: DaemonProcess, notify: NotifySocket, reason: str) -> dict:
    """READY=1 came, the engine is reported down with ``reason``, synthesis is refused, the rest answers."""
    notify.collect(lambda m: "READY=1" in m, timeout=120)
    with Client(proc.endpoint, timeout_s=10) as c:
        health = c.health()
        assert health["state"] == "degraded" and health["ready"] is False
        assert reason in health["reasons"]["engine"]
        with pytest.raises(ClientError) as err:
            c.synthesize("hello")
        assert err.value.code == "not_ready" and reason in err.value.message
        assert c.ping()["pong"]
        return c.status()


def test_missing_checkpoint_degrades_visibly_and_keeps_answering(tmp_path, demo_cache):
    config = tmp_path / "edge.toml"
    config.write_text(f'[hardware]\nenabled = false\n[engine]\ncheckpoint = "{tmp_path / "nope.safetensors"}"\n')
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = DaemonProcess(tmp_path, demo_cache, config=config, NOTIFY_SOCKET=str(notify.path))
    try:
        _ready_but_degraded_and_answering(proc, notify, "nope.safetensors")
        assert any(m.startswith("STATUS=degraded") for m in notify.messages)
        assert "<3>" in proc.log()  # the reason is in the journal at error priority
    finally:
        proc.stop()
        notify.close()


def test_broken_torch_install_degrades_visibly_and_telemetry_still_starts(tmp_path, demo_cache):
    """The engine's import failing (a broken torch) is a load error like any other: READY, degraded, answering."""
    broken = tmp_path / "broken"
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text('raise ImportError("libtorch_cuda.so: cannot open shared object file")\n')
    config = tmp_path / "edge.toml"
    config.write_text("[hardware]\nenabled = false\n")
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = DaemonProcess(tmp_path, demo_cache, config=config, NOTIFY_SOCKET=str(notify.path),
                         PYTHONPATH=f"{broken}{os.pathsep}{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    try:
        status = _ready_but_degraded_and_answering(proc, notify, "engine not importable: ImportError: libtorch_cuda.so")
        assert status["telemetry"]["summary"] != "starts when the warm-up ends"
        assert "<3>daemon: engine failed to import" in proc.log()
    finally:
        proc.stop()
        notify.close()


# --- stopping -------------------------------------------------------------------------------------


def _slow_daemon(tmp_path: Path, demo_cache: Path, **env: str) -> tuple[DaemonProcess, Path]:
    """A daemon whose synthesis the test can make arbitrarily slow: the engine's clock emulation
    sleeps after every sampling step in proportion to max_freq / cur_freq of this devfreq folder."""
    devfreq = tmp_path / "devfreq"
    devfreq.mkdir()
    (devfreq / "max_freq").write_text("1000\n")
    (devfreq / "cur_freq").write_text("1000\n")
    config = tmp_path / "edge.toml"
    config.write_text(f'[hardware]\nenabled = false\n[engine]\nemulate_clock_devfreq = "{devfreq}"\n')
    return DaemonProcess(tmp_path, demo_cache, config=config, **env), devfreq


def test_sigterm_cancels_a_synthesis_longer_than_the_drain_and_exits_cleanly(tmp_path, demo_cache):
    """The running synthesis stops at its next step, it and the queued one get shutting_down,
    and the process exits 0 with its sockets removed, long before the unit's stop timeout."""
    import time

    proc, devfreq = _slow_daemon(tmp_path, demo_cache, ISHOWTTS_EDGE_SERVER__DRAIN_TIMEOUT_S="1")
    try:
        proc.wait_ready()
        (devfreq / "cur_freq").write_text("50\n")  # every sampling step now takes 20x as long
        results: dict[str, object] = {}

        def synth(name: str) -> None:
            try:
                with Client(proc.endpoint, timeout_s=120, retries=0) as c:
                    results[name] = c.synthesize(" ".join(["A sentence that takes a while."] * 3), seed=1, nfe_step=64)
            except ClientError as exc:
                results[name] = exc

        running = threading.Thread(target=synth, args=("running",))
        running.start()
        with Client(proc.endpoint, timeout_s=10) as c:
            deadline = time.monotonic() + 30
            while c.status()["queue"]["pending"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            queued = threading.Thread(target=synth, args=("queued",))
            queued.start()
            while c.status()["queue"]["pending"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.status()["queue"]["pending"] == 2
        time.sleep(1.0)  # well inside the synthesis: 64 steps of a second or more each
        stop_sent = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        rc = proc.proc.wait(60)
        stopped_in = time.monotonic() - stop_sent
        running.join(10)
        queued.join(10)
        for name in ("running", "queued"):
            assert isinstance(results.get(name), ClientError), f"{name}: {results.get(name)!r}"
            assert results[name].code == "shutting_down", f"{name}: {results[name]}"
        assert "cancelled" in results["running"].message
        assert rc == 0, proc.log()
        assert stopped_in < 20, f"stop took {stopped_in:.1f}s"  # the unit's TimeoutStopSec is 30 s
        assert not (tmp_path / "run" / "tts.sock").exists() and not (tmp_path / "run" / "events.sock").exists()
        assert "terminate called" not in proc.log()
    finally:
        proc.stop()


def test_the_units_stop_timeout_covers_the_drain_the_cancellation_and_closing():
    """systemd SIGKILLs a daemon still busy at TimeoutStopSec: the drain, the cancelled synthesis
    reaching its next step and closing must all fit, by default, with room to spare."""
    import re

    from ishowtts_edge.config import ServerConfig
    from ishowtts_edge.daemon import CANCEL_GRACE_S
    from ishowtts_edge.server import Server

    unit = (REPO / "systemd" / "ishowtts-edge.service").read_text()
    stop_s = int(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M).group(1))
    defaults = ServerConfig()
    assert stop_s >= defaults.drain_timeout_s + CANCEL_GRACE_S + Server.JOIN_SECONDS + 5
    nofile = int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1))
    assert nofile >= 4 * defaults.max_connections  # connection_cap() would not lower the default
