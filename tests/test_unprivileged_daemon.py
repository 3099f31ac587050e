"""The daemon runs without root: it reaches hwctl only through the socket.

CI runs as root, so the test creates an unprivileged user (primary group =
hwctl's allowed group), starts the real daemon as that user with setpriv, and checks
its credentials in /proc.  Where the interpreter lives under a 0700 /root (as on the
machines this project is built on), the daemon is started inside a private mount
namespace in which a 0755 view of /root holds just the interpreter tree; nothing on the
host changes and the daemon still runs with the user's uid, gid and no capabilities.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fakes.board import FakeBoard
from fakes.hwctl_process import (
    HwctlProcess,
    as_user,
    board_daemon_toml,
    create_users,
    raw_request,
    require_root,
    user_python,
    write_hwctl_config,
)

from conftest import REPO
from ishowtts_edge.client import Client, ClientError


def _proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _daemon_argv(user, config: Path, scratch: Path) -> list[str]:
    python = os.path.realpath(sys.executable)
    serve = [
        "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--inh-caps=-all",
        "--bounding-set=-all", "--no-new-privs",
        sys.executable, "-m", "ishowtts_edge.cli", "--config", str(config), "serve",
    ]
    if as_user(user, [sys.executable, "-c", "pass"]).returncode == 0:
        return serve
    pyenv_root = Path(python).parents[3] if "/.pyenv/" in python else None
    if pyenv_root is None or not str(pyenv_root).startswith("/root/") or not shutil.which("unshare"):
        pytest.skip(f"user {user.name} cannot execute {python} and no namespace view applies")
    # A private mount namespace: a 0755 stand-in for /root that contains only the
    # interpreter tree, bind-mounted over /root for this process tree alone.
    view = scratch / "rootview"
    view.mkdir(mode=0o755)
    target = view / pyenv_root.relative_to("/root")
    target.mkdir(parents=True)
    script = f'mount --bind "{pyenv_root}" "{target}" && mount --bind "{view}" /root && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *serve]


def test_daemon_runs_unprivileged_and_reaches_hwctl(demo_cache):
    require_root()
    users = create_users()
    base = Path(tempfile.mkdtemp(prefix="unpriv-"))
    base.chmod(0o755)
    hwctl = proc = None
    try:
        board = FakeBoard(base / "fake")
        hwctl = HwctlProcess(
            write_hwctl_config(base / "hwctl.toml", board, base / "hwstate", allowed_groups=[users.group]),
            socket_mode="0660",
            socket_group=users.group,
        )
        run, cache = base / "run", base / "cache"
        for d in (run, base / "state", cache):
            d.mkdir()
            os.chown(d, users.member.uid, users.member.gid)
        shutil.copytree(demo_cache / "demo", cache / "demo") if (demo_cache / "demo").exists() else None
        for dirpath, _, files in os.walk(cache):
            os.chown(dirpath, users.member.uid, users.member.gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), users.member.uid, users.member.gid)
        config = base / "edge.toml"
        config.write_text(
            f"""
[paths]
runtime_dir = "{run}"
state_dir = "{base / 'state'}"
cache_dir = "{cache}"

[engine]
device = "cpu"
"""
            + board_daemon_toml(board, hwctl.socket)
        )
        config.chmod(0o644)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ISHOWTTS_EDGE_", "NOTIFY_SOCKET"))}
        env["PYTHONPATH"] = str(REPO)
        log = open(base / "daemon.log", "wb")
        proc = subprocess.Popen(_daemon_argv(users.member, config, base), env=env, cwd="/", stdout=log, stderr=subprocess.STDOUT)
        endpoint = f"ipc://{run / 'tts.sock'}"
        deadline = time.monotonic() + 240
        status = None
        with Client(endpoint, timeout_s=2, retries=0) as client:
            while time.monotonic() < deadline:
                assert proc.poll() is None, (base / "daemon.log").read_text()
                try:
                    status = client.status()
                    if status["state"] in ("ready", "degraded"):
                        break
                except ClientError:
                    pass
                time.sleep(0.3)
        assert status and status["state"] in ("ready", "degraded"), (base / "daemon.log").read_text()

        creds = _proc_status(proc.pid)
        assert creds["Uid"].split() == [str(users.member.uid)] * 4
        assert creds["Gid"].split() == [str(users.member.gid)] * 4
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(creds[cap], 16) == 0, (cap, creds[cap])
        assert creds["NoNewPrivs"] == "1"

        # Preflight asked hwctl, which locked the clocks on the fake board.
        assert status["hardware"]["state"] in ("applied", "ok"), status["hardware"]
        assert board.clocks_locked()
        with Client(endpoint, timeout_s=120) as client:
            assert client.synthesize("Unprivileged and speaking.", seed=1).header["samples"] > 0

        # A user outside hwctl's group cannot even connect to it.
        reply = raw_request(users.outsider, user_python(users.outsider), hwctl.socket, '{"action": "apply"}')
        assert reply == {"connect_error": "PermissionError"}, reply
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if hwctl is not None:
            hwctl.stop()
        users.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def test_without_hwctl_the_daemon_serves_degraded(tmp_path, demo_cache):
    from conftest import DaemonProcess

    board = FakeBoard(tmp_path / "fake")  # a Jetson's tools exist, hwctl is not installed
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""
[hardware]
hwctl_socket = "{tmp_path / 'absent.sock'}"
nvpmodel = "{board.nvpmodel}"
jetson_clocks = "{board.jetson_clocks}"
[telemetry]
sources = ["sysfs"]
sysfs_root = "{board.sysfs_root}"
"""
    )
    proc = DaemonProcess(tmp_path, demo_cache, config=config)
    try:
        health = proc.wait_ready()
        assert health["state"] == "degraded" and health["ready"] is True
        assert "hardware" in health["reasons"]
        with Client(proc.endpoint, timeout_s=120) as client:
            status = client.status()
            assert status["hardware"]["state"] == "degraded"
            assert "absent.sock" in status["hardware"]["message"] or "not installed" in status["hardware"]["message"]
            assert client.synthesize("Still serving.", seed=1).header["samples"] > 0
        assert "<4>" in proc.log()
    finally:
        proc.stop()
