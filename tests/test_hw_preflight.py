"""Start-up preflight against the real hwctl process and the fake board."""

from __future__ import annotations

import logging
import socket

import pytest
from fakes.board import FakeBoard
from fakes.hwctl_process import HwctlProcess, require_root, write_hwctl_config

from ishowtts_edge.config import HardwareConfig
from ishowtts_edge.hwctl_client import HwctlClient
from ishowtts_edge.preflight import preflight


@pytest.fixture
def run_hwctl(world_tmp):
    started = []

    def start(board: FakeBoard, **overrides) -> HwctlProcess:
        require_root()
        config = write_hwctl_config(world_tmp / "hwctl.toml", board, world_tmp / "state", **overrides)
        hwctl = HwctlProcess(config)
        started.append(hwctl)
        return hwctl

    yield start
    for hwctl in started:
        hwctl.stop()


def cfg_for(hwctl: HwctlProcess, board: FakeBoard, **extra) -> HardwareConfig:
    return HardwareConfig(
        hwctl_socket=hwctl.socket, nvpmodel=board.nvpmodel, jetson_clocks=board.jetson_clocks, **extra
    )


def run_preflight(cfg: HardwareConfig):
    return preflight(HwctlClient(cfg), cfg)


def test_applies_mode_and_clocks_and_logs_what_changed(world_tmp, run_hwctl, caplog):
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    cfg = cfg_for(run_hwctl(board), board)
    with caplog.at_level(logging.INFO, logger="ishowtts_edge.preflight"):
        result = run_preflight(cfg)
    assert result.state == "applied", result.message
    assert result.power_mode == {"id": 0, "name": "MAXN"} and result.clocks_locked is True
    assert "power_mode: MODE_50W -> MAXN" in result.changes
    assert "clocks_locked: False -> True" in result.changes
    assert board.clocks_locked()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("what=power_mode" in m and 'change="MODE_50W -> MAXN"' in m for m in messages)
    assert result.to_dict()["summary"].startswith("applied: power mode MAXN")

    second = run_preflight(cfg)  # now already at target
    assert second.state == "ok" and second.changes == []


def test_reboot_needing_mode_is_degraded_with_instructions(world_tmp, run_hwctl, caplog):
    board = FakeBoard(world_tmp, power_mode="MODE_30W")
    with caplog.at_level(logging.WARNING, logger="ishowtts_edge.preflight"):
        result = run_preflight(cfg_for(run_hwctl(board), board))
    assert result.state == "degraded" and result.reboot_required
    assert "sudo nvpmodel -m 0" in result.message and "reboot" in result.message
    assert result.power_mode["name"] == "MODE_30W" and result.clocks_locked is True
    assert any(r.levelno == logging.WARNING and "state=degraded" in r.getMessage() for r in caplog.records)


def test_apply_failure_degrades_and_keeps_the_reason(world_tmp, run_hwctl):
    board = FakeBoard(world_tmp, power_mode="MAXN")
    board.set_option(gpu_lock_fails=True)
    result = run_preflight(cfg_for(run_hwctl(board), board))
    assert result.state == "degraded"
    assert "apply failed" in result.message and "Failed to max GPU frequency" in result.message
    assert result.power_mode["name"] == "MAXN" and result.clocks_locked is False


def test_apply_at_start_off_only_reports(world_tmp, run_hwctl):
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    result = run_preflight(cfg_for(run_hwctl(board), board, apply_at_start=False))
    assert result.state == "degraded" and "apply_at_start = false" in result.message
    assert board.power_mode()[1] == "MODE_50W" and not board.clocks_locked()


def test_hwctl_without_tools_means_not_a_jetson(world_tmp, run_hwctl):
    board = FakeBoard(world_tmp)
    hwctl = run_hwctl(board, nvpmodel="/nonexistent/nvpmodel", jetson_clocks="/nonexistent/jetson_clocks")
    result = run_preflight(cfg_for(hwctl, board))
    assert result.state == "disabled" and "/nonexistent/nvpmodel" in result.message


def test_missing_hwctl_on_a_jetson_is_degraded(tmp_path):
    board = FakeBoard(tmp_path)
    cfg = HardwareConfig(hwctl_socket=tmp_path / "none.sock", nvpmodel=board.nvpmodel, jetson_clocks=board.jetson_clocks)
    result = run_preflight(cfg)
    assert result.state == "degraded" and "not installed" in result.message


def test_missing_hwctl_off_jetson_is_disabled(tmp_path):
    cfg = HardwareConfig(
        hwctl_socket=tmp_path / "none.sock", nvpmodel=tmp_path / "nvpmodel", jetson_clocks=tmp_path / "jetson_clocks"
    )
    result = run_preflight(cfg)
    assert result.state == "disabled" and "not a Jetson" in result.message


def test_disabled_in_config_does_not_touch_hwctl(tmp_path):
    result = run_preflight(HardwareConfig(enabled=False, hwctl_socket=tmp_path / "none.sock"))
    assert result.state == "disabled" and "hardware.enabled = false" in result.message


def test_garbage_from_the_socket_degrades_instead_of_raising(tmp_path):
    import threading

    path = tmp_path / "garbage.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"this is not json\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        result = run_preflight(HardwareConfig(hwctl_socket=path, hwctl_timeout_s=5))
    finally:
        thread.join(5)
        server.close()
    assert result.state == "degraded" and "unreadable reply" in result.message


def test_preflight_reports_the_clocks_it_locked_as_targets_for_the_metrics(world_tmp, run_hwctl):
    from fakes import orin

    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    cfg = cfg_for(run_hwctl(board), board)
    applied = run_preflight(cfg)
    assert applied.state == "applied"
    targets = {"gpu_hz": orin.GPU_FREQS_HZ[-1], "cpu_hz": orin.CPU_FREQS_KHZ[-1] * 1000, "emc_hz": orin.EMC_MAX_HZ}
    assert applied.clock_targets == targets
    assert run_preflight(cfg).clock_targets == targets  # already locked: the same, read from the query
    assert applied.to_dict()["clock_targets"] == targets


def test_no_clock_targets_while_the_clocks_are_not_locked(world_tmp, run_hwctl):
    board = FakeBoard(world_tmp, power_mode="MODE_50W")
    result = run_preflight(cfg_for(run_hwctl(board), board, apply_at_start=False))
    assert result.state == "degraded" and result.clock_targets is None
