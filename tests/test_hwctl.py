"""hwctl, the root program, run for real as a separate root process over the fake CLIs."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
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
    raw_request,
    repo_env,
    require_root,
    user_python,
    write_hwctl_config,
)

from ishowtts_edge.config import HardwareConfig
from ishowtts_edge.hwctl_client import HwctlCallError, HwctlClient


def start_hwctl(world_tmp: Path, board: FakeBoard, users=None, **overrides) -> HwctlProcess:
    if users is not None:
        overrides.setdefault("allowed_groups", [users.group])
    config = write_hwctl_config(world_tmp / "hwctl.toml", board, world_tmp / "state", **overrides)
    return HwctlProcess(config)


@pytest.fixture
def hwctl_factory(world_tmp):
    started = []

    def make(board, users=None, **overrides):
        require_root()
        hwctl = start_hwctl(world_tmp, board, users, **overrides)
        started.append(hwctl)
        return hwctl

    yield make
    for hwctl in started:
        hwctl.stop()


@pytest.fixture(scope="module")
def shared_hwctl(users):
    """One board + hwctl for the many refusal cases (starting hwctl costs ~0.5 s on CI)."""
    base = Path(tempfile.mkdtemp(prefix="ihwt-"))
    try:
        base.chmod(0o755)
        board = FakeBoard(base, power_mode="MODE_50W")
        hwctl = start_hwctl(base, board, users)
        yield board, hwctl
        hwctl.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def client_for(hwctl: HwctlProcess, **cfg) -> HwctlClient:
    return HwctlClient(HardwareConfig(hwctl_socket=hwctl.socket, hwctl_timeout_s=60, **cfg))


# ----------------------------------------------------------------- actions as root


def test_query_reports_mode_clocks_and_fan(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    result = client_for(hwctl_factory(board)).query()
    assert result["power_mode"] == {"id": 3, "name": "MODE_50W"}
    assert result["clocks_locked"] is False
    assert len(result["cpu"]) == 12 and all(c["online"] for c in result["cpu"])
    assert result["cpu"][0]["max_khz"] == 1497600
    assert result["gpu"] == {"min_hz": 306000000, "max_hz": 816000000, "cur_hz": 306000000}
    assert result["emc"]["override"] is False
    assert result["fan"] == {"control": "nvfancontrol", "hwmon0_pwm1": 69}


def test_apply_switches_mode_live_locks_clocks_and_restore_undoes_the_lock(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    client = client_for(hwctl_factory(board))
    result = client.apply()
    assert result["target"] == {"id": 0, "name": "MAXN"}
    assert result["mode_changed"] is True and result["reboot_required"] is False
    assert result["store"]["stored"] is True
    assert board.power_mode() == (0, "MAXN")
    assert board.clocks_locked()  # the fake sysfs really changed
    assert board.gpu()["min"] == board.gpu()["max"] == 1300500000
    assert result["after"]["clocks_locked"] is True
    stored = Path(result["store"]["store"])
    assert stored.is_file() and "min_freq" in stored.read_text()

    again = client.apply()  # idempotent; the first store is kept
    assert again["mode_changed"] is False and again["store"]["stored"] is False
    assert board.clocks_locked()

    restored = client.restore()
    assert restored["after"]["clocks_locked"] is False
    assert not board.clocks_locked()
    assert board.gpu()["min"] == 306000000


def test_r39_show_without_online_fields_still_sees_offline_cores_and_a_lock(world_tmp, hwctl_factory):
    # L4T R39 prints no Online= on cpu lines; the offline cores' lines carry their unlocked limits.
    board = FakeBoard(world_tmp, jetpack=7, power_mode="MODE_30W")
    client = client_for(hwctl_factory(board, power_modes=["MODE_30W"]), power_mode="MODE_30W")
    before = client.query()
    assert [c["online"] for c in before["cpu"]] == [True] * 8 + [False] * 4
    assert before["clocks_locked"] is False
    result = client.apply()
    assert board.clocks_locked()
    assert result["after"]["clocks_locked"] is True
    assert client.query()["clocks_locked"] is True


def test_mode_change_that_needs_a_reboot_is_declined_and_reported(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp, power_mode="MODE_30W")  # 8 cores -> MAXN's 12 needs a reboot
    result = client_for(hwctl_factory(board)).apply()
    assert result["reboot_required"] is True and result["mode_changed"] is False
    assert "Reboot required" in result["mode_output"]
    assert board.power_mode() == (2, "MODE_30W")
    assert "rebooted_into" not in board.layout.state()  # never confirmed
    assert board.clocks_locked()  # still locked at the current mode's maximum
    assert board.gpu()["min"] == 612000000


def test_a_prompt_that_never_returns_times_out_and_hwctl_survives(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp, power_mode="MODE_30W")
    board.set_option(nvpmodel_prompt_hangs=True)
    hwctl = hwctl_factory(board, timeout_s=1.5)
    client = client_for(hwctl)
    started = time.monotonic()
    with pytest.raises(HwctlCallError) as info:
        client.apply()
    assert info.value.kind == "tool_timeout"
    assert "nvpmodel -m 0" in info.value.message and "killed" in info.value.message
    assert time.monotonic() - started < 30
    assert client.query()["power_mode"]["name"] == "MODE_30W"  # still serving


def test_jetson_clocks_error_with_exit_status_zero_is_an_error(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp, power_mode="MAXN")
    board.set_option(gpu_lock_fails=True)
    with pytest.raises(HwctlCallError) as info:
        client_for(hwctl_factory(board)).apply()
    assert info.value.kind == "tool_failed"
    assert "Failed to max GPU frequency" in info.value.message


def test_missing_tool_is_named(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp)
    hwctl = hwctl_factory(board, nvpmodel="/nonexistent/nvpmodel")
    with pytest.raises(HwctlCallError) as info:
        client_for(hwctl).query()
    assert info.value.kind == "tool_missing"
    assert "/nonexistent/nvpmodel" in info.value.message


def test_restore_without_a_store_is_a_clear_error(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp)
    with pytest.raises(HwctlCallError) as info:
        client_for(hwctl_factory(board)).restore()
    assert info.value.kind == "no_store"


def test_mode_not_allowed_by_hwctl_toml_is_refused(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    client = client_for(hwctl_factory(board), power_mode="MODE_15W")
    with pytest.raises(HwctlCallError) as info:
        client.apply()
    assert info.value.kind == "refused" and "MODE_15W" in info.value.message
    assert board.power_mode() == (3, "MODE_50W") and not board.clocks_locked()


def test_unknown_mode_name_lists_the_boards_modes(world_tmp, hwctl_factory):
    board = FakeBoard(world_tmp)
    client = client_for(hwctl_factory(board, power_modes=["MAXN", "MAXN_SUPER"]), power_mode="MAXN_SUPER")
    with pytest.raises(HwctlCallError) as info:
        client.apply()
    assert info.value.kind == "unknown_mode" and "MODE_30W" in info.value.message


# ----------------------------------------------------------------- who may ask, and what


@pytest.mark.parametrize(
    "line,reason",
    [
        ('{"action": "reboot"}', "action 'reboot' refused"),
        ('{"action": "query; reboot"}', "action 'query; reboot' refused"),
        ('{"action": "query", "power_mode": "MAXN"}', "query: unexpected argument(s) power_mode refused"),
        ('{"action": "apply", "args": ["-f", "/tmp/evil.conf"]}', "apply: unexpected argument(s) args refused"),
        ('{"action": "apply", "power_mode": "MAXN; reboot"}', "power_mode must be a plain mode name"),
        ('{"action": "apply", "power_mode": true}', "power_mode must be a mode name or id"),
        ('{"action": "restore", "file": "/etc/shadow"}', "restore: unexpected argument(s) file refused"),
        ('["query"]', "request must be a JSON object"),
        ("query", "request is not a JSON object on one line"),
        ('{"action": "query", "x": "' + "a" * 5000 + '"}', "request longer than"),
    ],
)
def test_anything_outside_the_protocol_is_refused(shared_hwctl, users, line, reason):
    """Refused for what the request says: an allowed peer passes the peer check first."""
    board, hwctl = shared_hwctl
    reply = raw_request(users.member, user_python(users.member), hwctl.socket, line)
    assert reply["ok"] is False
    assert reply["error"]["kind"] in ("refused", "bad_request")
    assert reason in reply["error"]["message"], reply
    assert board.power_mode() == (3, "MODE_50W") and not board.clocks_locked()


def test_unauthorised_peer_is_refused_and_changes_nothing(world_tmp, hwctl_factory, users):
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    hwctl = hwctl_factory(board, users)
    python = user_python(users.outsider)
    for action in ("query", "apply", "restore"):
        reply = raw_request(users.outsider, python, hwctl.socket, json.dumps({"action": action}))
        assert reply["ok"] is False and reply["error"]["kind"] == "refused"
        assert f"uid={users.outsider.uid}" in reply["error"]["message"]
    assert board.power_mode() == (3, "MODE_50W") and not board.clocks_locked()
    assert "refused peer" in hwctl.log() and f"uid={users.outsider.uid}" in hwctl.log()


def test_authorised_group_member_can_query_and_apply(world_tmp, hwctl_factory, users):
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    hwctl = hwctl_factory(board, users)
    python = user_python(users.member)
    reply = raw_request(users.member, python, hwctl.socket, '{"action": "query"}')
    assert reply["ok"] is True and reply["result"]["power_mode"]["name"] == "MODE_50W"
    reply = raw_request(users.member, python, hwctl.socket, '{"action": "apply", "power_mode": "MAXN"}')
    assert reply["ok"] is True, reply
    assert board.power_mode() == (0, "MAXN") and board.clocks_locked()


def test_allowed_user_by_name_works_without_the_group(world_tmp, hwctl_factory, users):
    board = FakeBoard(world_tmp)
    hwctl = hwctl_factory(board, allowed_users=[users.outsider.name], allowed_groups=[])
    reply = raw_request(users.outsider, user_python(users.outsider), hwctl.socket, '{"action": "query"}')
    assert reply["ok"] is True


def test_socket_permissions_keep_others_out_before_peercred(world_tmp, users):
    """With the unit's SocketMode=0660 an outsider cannot even connect; the client says so."""
    require_root()
    board = FakeBoard(world_tmp)
    config = write_hwctl_config(world_tmp / "hwctl.toml", board, world_tmp / "state", allowed_groups=[users.group])
    hwctl = HwctlProcess(config, socket_mode="0660", socket_group=users.group)
    try:
        assert (hwctl.socket.stat().st_mode & 0o777, hwctl.socket.stat().st_gid) == (0o660, users.gid)
        reply = raw_request(users.outsider, user_python(users.outsider), hwctl.socket, '{"action": "query"}')
        assert reply == {"connect_error": "PermissionError"}
        reply = raw_request(users.member, user_python(users.member), hwctl.socket, '{"action": "query"}')
        assert reply["ok"] is True
    finally:
        hwctl.stop()


# ----------------------------------------------------------------- other ways in


def test_stdio_mode_serves_one_accepted_connection(world_tmp):
    """What systemd's Accept=yes does: the connection is the service's stdin."""
    require_root()
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    config = write_hwctl_config(world_tmp / "hwctl.toml", board, world_tmp / "state")
    path = world_tmp / "listen.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        conn, _ = listener.accept()
        with conn, client:
            # stdout and stderr on the connection too: systemd's default with StandardInput=socket
            proc = subprocess.Popen(
                [sys.executable, "-m", "ishowtts_edge.hwctl", "--stdio", "--config", str(config)],
                stdin=conn.fileno(), stdout=conn.fileno(), stderr=conn.fileno(), env=repo_env(),
            )
            client.sendall(b'{"action": "apply"}\n')
            client.settimeout(60)
            data = b""
            while not data.endswith(b"\n"):
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
            assert proc.wait(60) == 0, data
    assert data.count(b"\n") == 1, data  # exactly the reply: no log lines mixed in
    reply = json.loads(data)
    assert reply["ok"] is True and reply["action"] == "apply"
    assert board.power_mode() == (0, "MAXN") and board.clocks_locked()


def test_direct_cli_for_root_prints_json(world_tmp):
    require_root()
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    config = write_hwctl_config(world_tmp / "hwctl.toml", board, world_tmp / "state")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "ishowtts_edge.hwctl", *a, "--config", str(config)],
        capture_output=True, text=True, env=repo_env(), timeout=60,
    )
    done = run("apply", "--power-mode", "MODE_50W")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"]["after"]["clocks_locked"] is True
    done = run("query")
    assert json.loads(done.stdout)["result"]["power_mode"]["name"] == "MODE_50W"
    done = run("apply", "--power-mode", "MODE_15W")
    assert done.returncode == 1 and json.loads(done.stdout)["error"]["kind"] == "refused"


def test_direct_cli_as_non_root_says_so(world_tmp, users):
    board = FakeBoard(world_tmp)
    config = write_hwctl_config(world_tmp / "hwctl.toml", board, world_tmp / "state")
    python = user_python(users.outsider)
    hwctl = Path(__file__).resolve().parents[1] / "ishowtts_edge" / "hwctl.py"
    copy = world_tmp / "hwctl.py"  # the repo itself may not be readable by the user
    shutil.copy(hwctl, copy)
    copy.chmod(0o644)
    done = as_user(users.outsider, [python, str(copy), "query", "--config", str(config)])
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["kind"] == "not_root"


@pytest.mark.parametrize("mode,owned_by_outsider", [(0o664, False), (0o646, False), (0o644, True)],
                         ids=["group-writable", "world-writable", "not-root-owned"])
def test_config_others_could_write_is_refused(world_tmp, users, mode, owned_by_outsider):
    """hwctl runs its configured nvpmodel as root: whoever can edit the config owns the board."""
    require_root()
    board = FakeBoard(world_tmp)
    config = write_hwctl_config(world_tmp / "hwctl.toml", board, world_tmp / "state")

    def query() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ishowtts_edge.hwctl", "query", "--config", str(config)],
            capture_output=True, text=True, env=repo_env(), timeout=60,
        )

    config.chmod(0o644)
    assert query().returncode == 0  # the same file, root-owned and 0644, is accepted
    config.chmod(mode)
    if owned_by_outsider:
        os.chown(config, users.outsider.uid, -1)
    done = query()
    assert done.returncode == 1
    assert "must be owned by root and not group/world-writable" in json.loads(done.stdout)["error"]["message"]


# ----------------------------------------------------------------- client transport errors


def test_client_reports_missing_socket_as_hwctl_not_installed(tmp_path):
    client = HwctlClient(HardwareConfig(hwctl_socket=tmp_path / "nope.sock"))
    with pytest.raises(HwctlCallError) as info:
        client.query()
    assert info.value.kind == "not_installed" and "not installed" in info.value.message


def test_client_reports_a_dead_socket_as_not_running(tmp_path):
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens
    with pytest.raises(HwctlCallError) as info:
        HwctlClient(HardwareConfig(hwctl_socket=path)).query()
    assert info.value.kind == "not_running"


def test_client_times_out_on_a_silent_hwctl(tmp_path):
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        client = HwctlClient(HardwareConfig(hwctl_socket=path, hwctl_timeout_s=0.3))
        with pytest.raises(HwctlCallError) as info:
            client.query()
    assert info.value.kind == "timeout"


def test_store_is_per_boot_and_skipped_when_clocks_were_already_locked(tmp_path, monkeypatch):
    """Runs hwctl's actions in-process (as root) to swap the boot id."""
    require_root()
    from ishowtts_edge import hwctl

    board = FakeBoard(tmp_path, power_mode="MAXN")
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    monkeypatch.setattr(hwctl, "BOOT_ID_PATH", boot_id)
    settings = hwctl.HwctlSettings.load(write_hwctl_config(tmp_path / "hwctl.toml", board, tmp_path / "state"))
    actions = hwctl.HwctlActions(settings)
    assert actions.apply()["store"]["stored"] is True
    assert actions.apply()["store"]["stored"] is False  # same boot: kept

    boot_id.write_text("boot-2\n")  # a reboot; say something locked the clocks before us
    result = actions.apply()
    assert result["store"] == {
        "stored": False, "store": None, "note": "clocks were already locked before the first apply; nothing to store"
    }
    assert not actions.store_path().exists()  # the earlier boot's state is gone
    with pytest.raises(hwctl.HwctlError) as info:
        actions.restore()
    assert info.value.kind == "no_store"


def _modules_after_import(module: str) -> tuple[list[str], list[str]]:
    """(heavy third-party modules, other ishowtts_edge modules) loaded by importing ``module`` alone."""
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'pydantic', 'pydantic_settings', 'numpy', 'zmq', 'jtop'))\n"
        f"own = sorted(m for m in sys.modules if m.startswith('ishowtts_edge.') and m != {module!r})\n"
        "print(repr((heavy, own)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=repo_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip())


def test_hwctl_imports_nothing_heavy_and_nothing_of_the_package():
    """hwctl must stay one small file to audit, quick to start."""
    assert _modules_after_import("ishowtts_edge.hwctl") == ([], [])


def test_the_daemons_client_never_loads_the_root_program():
    assert "ishowtts_edge.hwctl" not in _modules_after_import("ishowtts_edge.hwctl_client")[1]
