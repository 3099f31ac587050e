"""The fakes behave like the real tools (reference section 3), and hwctl's parsers read real layouts."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from fakes.board import FakeBoard
from fakes.hwctl_process import as_user, create_users, require_root

from ishowtts_edge import hwctl

# AGX Orin 64 GB, JetPack 5 capture quoted in the reference (CPU lines trimmed to two).
JP5_SHOW = """SOC family:tegra234  Machine:NVIDIA Orin Jetson-Small Developer Kit
Online CPUs: 0-11
cpu0: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=2112000 IdleStates: WFI=1 c7=1 
cpu1: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=2112000 IdleStates: WFI=1 c7=1 
GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=2133000000 FreqOverride=0
DLA0_CORE:   Online=1 MinFreq=0 MaxFreq=1600000000 CurrentFreq=1600000000
PVA0_AXI:  Online=1 MinFreq=0 MaxFreq=832000000 CurrentFreq=832000000
FAN Dynamic Speed control=active hwmon2_pwm1=55
NV Power Mode: MAXN
"""


def run(tool: Path, *args: str, stdin=subprocess.DEVNULL, input=None):
    kwargs = {"input": input} if input is not None else {"stdin": stdin}
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=30, **kwargs)


def test_parse_jetpack5_capture():
    show = hwctl.parse_clocks_show(JP5_SHOW)
    assert [c["cpu"] for c in show["cpu"]] == [0, 1]
    assert show["cpu"][0]["max_khz"] == 2201600 and show["cpu"][0]["min_khz"] == 115200
    assert show["gpu"] == {"min_hz": 306000000, "max_hz": 1300500000, "cur_hz": 306000000}
    assert show["emc"]["override"] is False
    assert show["fan"] == {"control": "active", "hwmon2_pwm1": 55}
    assert hwctl.clocks_locked(show) is False


def test_parse_locked_jetpack6_sample_without_freq_override():
    text = (
        "cpu0:  Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0\n"
        "GPU MinFreq=1020000000 MaxFreq=1020000000 CurrentFreq=1020000000\nActive GPU TPCs: 4\n"
        "EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000\n"
        "FAN Dynamic Speed Control=disabled hwmon0_pwm1=255\n"
    )
    show = hwctl.parse_clocks_show(text)
    assert hwctl.clocks_locked(show) is True and show["emc"]["override"] is None
    assert show["fan"]["control"] == "disabled"


def test_parse_nvpmodel_query_skips_warnings_and_rejects_garbage():
    assert hwctl.parse_nvpmodel_query("NVPM WARN: fan mode is not set to cool\nNV Power Mode: MODE_30W\n2\n") == {
        "id": 2,
        "name": "MODE_30W",
    }
    with pytest.raises(hwctl.HwctlError) as info:
        hwctl.parse_nvpmodel_query("NV Power Mode: MAXN\n")
    assert info.value.kind == "unparseable"
    with pytest.raises(hwctl.HwctlError):
        hwctl.parse_clocks_show("Unknown option: --show\nusage: ...")


def test_r39_show_takes_the_online_cpus_from_its_header():
    text = (
        "Online CPUs: 0-3,8-11, Offline CPUs: 4-7\n"
        + "".join(f"cpu{c}: Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1190400\n" for c in range(12))
        + "GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000\n"
    )
    show = hwctl.parse_clocks_show(text)
    assert [c["cpu"] for c in show["cpu"] if c["online"]] == [0, 1, 2, 3, 8, 9, 10, 11]
    # Every core online (MAXN): the header has no Offline part.
    all_online = text.replace("Online CPUs: 0-3,8-11, Offline CPUs: 4-7\n", "Online CPUs: 0-11\n")
    assert all(c["online"] for c in hwctl.parse_clocks_show(all_online)["cpu"])
    # An Online= on the line wins over the header; no header and no Online= means online.
    mixed = text.replace("cpu4: Governor", "cpu4: Online=1 Governor").replace("Online CPUs: 0-3,8-11, Offline CPUs: 4-7\n", "")
    assert all(c["online"] for c in hwctl.parse_clocks_show(mixed)["cpu"])


def test_show_output_of_every_jetpack_parses(tmp_path):
    require_root()  # jetson_clocks --show checks for root like the real script
    for jetpack in (5, 6, 7):
        board = FakeBoard(tmp_path / f"jp{jetpack}", jetpack=jetpack, power_mode="MODE_30W")
        show = hwctl.parse_clocks_show(run(board.jetson_clocks, "--show").stdout)
        assert [c["online"] for c in show["cpu"]] == [True] * 8 + [False] * 4
        assert show["gpu"]["max_hz"] == 612000000
        modes = hwctl.parse_nvpmodel_modes(run(board.nvpmodel, "-p", "--verbose").stdout)
        assert [m["name"] for m in modes["modes"]] == ["MAXN", "MODE_15W", "MODE_30W", "MODE_50W"]
        assert modes["default"] == {"id": 2, "name": "MODE_30W"}


def test_store_refuses_to_overwrite_without_an_answer_and_restore_needs_the_file(tmp_path):
    require_root()
    board = FakeBoard(tmp_path)
    store = tmp_path / "dfs.conf"
    assert run(board.jetson_clocks, "--restore", str(store)).stdout.strip() == f"Error: {store} file not found !"
    assert run(board.jetson_clocks, "--restore", str(store)).returncode == 1
    first = run(board.jetson_clocks, "--store", str(store))
    assert first.returncode == 0 and f"Storing system configuration in {store}" in first.stdout
    second = run(board.jetson_clocks, "--store", str(store))
    assert second.returncode == 1 and f"Error: file {store} already exists!" in second.stdout
    assert run(board.jetson_clocks, "--store", str(store), input="y\n").returncode == 0


def test_lock_and_restore_roundtrip_in_the_fake_tree(tmp_path):
    require_root()
    board = FakeBoard(tmp_path, power_mode="MODE_50W")
    store = tmp_path / "dfs.conf"
    run(board.jetson_clocks, "--store", str(store))
    assert run(board.jetson_clocks).returncode == 0
    assert board.clocks_locked() and board.gpu()["cur"] == 816000000
    run(board.jetson_clocks, "--restore", str(store))
    assert not board.clocks_locked() and board.gpu()["min"] == 306000000


def test_unknown_option_exits_zero_like_the_real_script(tmp_path):
    board = FakeBoard(tmp_path)
    done = run(board.jetson_clocks, "--bogus")
    assert done.returncode == 0 and "Unknown option: --bogus" in done.stderr


def test_nvpmodel_live_switch_changes_caps_and_unlocks(tmp_path):
    require_root()
    board = FakeBoard(tmp_path, power_mode="MAXN")
    run(board.jetson_clocks)
    assert board.clocks_locked()
    done = run(board.nvpmodel, "-m", "3")
    assert done.returncode == 0 and done.stdout == ""
    assert board.power_mode() == (3, "MODE_50W") and not board.clocks_locked()
    assert board.gpu()["max"] == 816000000


def test_tools_require_root():
    require_root()
    base = Path(tempfile.mkdtemp(prefix="ihwt-"))
    base.chmod(0o755)
    users = create_users()
    try:
        board = FakeBoard(base)
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        done = as_user(users.outsider, [str(board.nvpmodel), "-m", "0"])
        assert (done.returncode, done.stdout.strip()) == (1, "Please run as root")
        done = as_user(users.outsider, [str(board.jetson_clocks)])
        assert done.returncode == 1 and "as a root user" in done.stdout and done.stdout.startswith("Error: Run this script(")
        assert as_user(users.outsider, [str(board.jetson_clocks), "-h"]).returncode == 0  # parsed before the check
        done = as_user(users.outsider, [str(board.nvpmodel), "-q"])  # reading works unprivileged
        assert done.returncode == 0 and "NV Power Mode: MAXN" in done.stdout
    finally:
        users.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def test_powered_off_zone_fails_reads_with_eagain_like_the_kernel(tmp_path):
    board = FakeBoard(tmp_path)
    try:
        board.power_off_zone("gpu")
        temp = board.root / "sys/class/thermal/thermal_zone1/temp"
        fd = os.open(temp, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(BlockingIOError):  # read(2) fails with EAGAIN
                os.read(fd, 64)
            with pytest.raises(TypeError):  # what buffered text I/O makes of it, as on the board
                io.open(fd, closefd=False).read()
        finally:
            os.close(fd)
    finally:
        board.close()
