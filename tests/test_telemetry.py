"""Telemetry sampler and its sources against the fake board (and a jtop client stand-in)."""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import time
from collections import Counter
from pathlib import Path

import pytest
from fakes.board import FakeBoard
from fakes.jtop_fake import FakeJtopService

from ishowtts_edge.config import TelemetryConfig
from ishowtts_edge.telemetry import (
    JtopSource,
    SourceUnavailable,
    SysfsSource,
    TelemetryBuffer,
    TelemetrySample,
    TelemetrySampler,
)


def wait_for(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def cfg_for(root: Path, **extra) -> TelemetryConfig:
    values = {"interval_s": 0.05, "sysfs_root": root, "reconnect_min_s": 0.1, "reconnect_max_s": 0.4}
    values.update(extra)
    return TelemetryConfig(**values)


@pytest.fixture
def sampler_factory():
    made = []

    def make(cfg, **kwargs):
        sampler = TelemetrySampler(cfg, **kwargs)
        made.append(sampler)
        sampler.start()
        return sampler

    yield make
    for sampler in made:
        sampler.stop()


def jtop_sources(service: FakeJtopService, cfg: TelemetryConfig) -> dict:
    return {"jtop": lambda: JtopSource(cfg, factory=service.factory)}



class DirectoryScans:
    """Counts the listings of directories (listdir, glob, iterdir alike) through inotify, as the
    kernel sees them, and the opens of the files in them.  Closes are watched too: the kernel
    merges an event identical to the one queued last, so a run of bare opens would count as one."""

    IN_CLOSE_NOWRITE, IN_OPEN, IN_ISDIR = 0x10, 0x20, 0x40000000

    def __init__(self, *directories: Path):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self._dirs: dict[int, Path] = {}
        for directory in directories:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), self.IN_OPEN | self.IN_CLOSE_NOWRITE)
            assert wd >= 0, (directory, os.strerror(ctypes.get_errno()))
            self._dirs[wd] = directory
        self._counts: Counter[Path] = Counter()
        self._file_opens: Counter[Path] = Counter()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if mask == self.IN_OPEN | self.IN_ISDIR and length == 0:  # the directory itself, not a file in it
                    self._counts[self._dirs[wd]] += 1
                elif mask == self.IN_OPEN and name:
                    self._file_opens[self._dirs[wd] / os.fsdecode(name)] += 1

    def counts(self) -> dict[Path, int]:
        """Listings so far, by directory (every watched one, listed or not)."""
        self._drain()
        return {directory: self._counts[directory] for directory in self._dirs.values()}

    def opens(self, name: str) -> dict[Path, int]:
        """Opens so far of the file ``name``, by watched directory (every one, opened or not)."""
        self._drain()
        return {directory: self._file_opens[directory / name] for directory in self._dirs.values()}

    def __enter__(self) -> "DirectoryScans":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def scanned_dirs(board: FakeBoard) -> list[Path]:
    """The directories a sysfs source lists to find the board's nodes."""
    sys_ = board.sysfs_root / "sys"
    return [sys_ / d for d in ("class/devfreq", "class/hwmon", "class/thermal", "devices/system/cpu")]


def reload_drivers(board: FakeBoard) -> None:
    """What a reload of the GPU's and soctherm's drivers leaves: the GPU's devfreq node under
    another name, the over-current counters under another hwmon number."""
    lay = board.layout
    lay.devfreq_class.unlink()
    (lay.devfreq_class.parent / "devfreq0").symlink_to(lay.devfreq)
    moved = lay.oc_hwmon.parent / "hwmon7"
    lay.oc_hwmon.rename(moved)
    hwmon_class = board.sysfs_root / "sys/class/hwmon"
    (hwmon_class / lay.oc_hwmon.name).unlink()
    (hwmon_class / moved.name).symlink_to(moved)
    lay.oc_hwmon = moved


# ----------------------------------------------------------------- sysfs


@pytest.mark.parametrize("jetpack", [5, 6])
def test_sysfs_source_reads_the_orin_tree(tmp_path, jetpack):
    board = FakeBoard(tmp_path, jetpack=jetpack, power_mode="MODE_30W")
    source = SysfsSource(cfg_for(board.sysfs_root))
    source.open()
    sample = source.read()
    assert sample.source == "sysfs"
    assert (sample.gpu_cur_mhz, sample.gpu_min_mhz, sample.gpu_max_mhz) == (306.0, 306.0, 612.0)
    assert sample.gpu_hw_max_mhz == 1300.5
    assert sample.cpu_cur_mhz == [1190.4] * 8  # four cores offline in MODE_30W
    assert sample.emc_cur_mhz == 2133.0
    tj = "tj"
    assert sample.temperatures_c[tj] == 46.0
    assert not {"gpu", "GPU", "cv0", "CV0"} & set(sample.temperatures_c)  # -256 zones are offline, not alarms
    assert sample.power_mw == pytest.approx((4984 * 1208 + 4984 * 604 + 4976 * 912 + 4992 * 206) / 1000)
    assert sample.fan_pct == pytest.approx(27.1)
    assert (sample.nvpmodel_id, sample.nvpmodel_name) == (2, "MODE_30W")
    assert sample.jetson_clocks is False and sample.throttle == []


def test_unreadable_zone_is_skipped(tmp_path):
    board = FakeBoard(tmp_path)
    board.set_temp("cpu", None)
    source = SysfsSource(cfg_for(board.sysfs_root))
    source.open()
    assert "cpu" not in source.read().temperatures_c


def test_zones_failing_with_eagain_are_offline_and_the_rest_still_sampled(tmp_path, sampler_factory):
    board = FakeBoard(tmp_path)
    try:
        for zone in ("gpu", "cv0", "cv1", "cv2"):  # powered off, as on an idle Orin
            board.power_off_zone(zone)
        sampler = sampler_factory(cfg_for(board.sysfs_root, sources=["sysfs"]))
        sample = wait_for(sampler.latest, what="a sysfs sample with powered-off zones", timeout=10)
        assert sample.source == "sysfs"
        assert sample.temperatures_c == {"cpu": 45.5, "soc0": 44.0, "soc1": 45.0, "soc2": 44.5, "tj": 46.0}
        assert sample.gpu_cur_mhz == 306.0
        board.set_temp("tj", 71.0)  # later samples keep coming
        wait_for(lambda: sampler.latest().temperatures_c.get("tj") == 71.0, what="a later sample")
        assert sampler.status()["source"] == "sysfs"
    finally:
        board.close()


def test_throttle_indications(tmp_path):
    board = FakeBoard(tmp_path)
    board.set_gpu_freq(min_hz=1300500000, max_hz=1300500000, cur_hz=1300500000)  # locked
    source = SysfsSource(cfg_for(board.sysfs_root, hot_tj_c=90))
    source.open()
    assert source.read().throttle == []
    board.add_oc_events(3, 27)
    board.set_gpu_freq(cur_hz=918000000)
    assert source.read().throttle == ["oc3", "gpu_below_min"]
    board.set_temp("tj", 95.5)
    assert source.read().throttle == ["gpu_below_min", "thermal"]  # oc3 did not rise again


def test_sysfs_source_lists_the_board_once_however_many_samples(tmp_path):
    board = FakeBoard(tmp_path, power_mode="MODE_30W")  # four cores offline
    try:
        board.power_off_zone("soc0")  # EAGAIN: offline in each sample, the zone still there
        board.set_temp("cpu", None)  # unreadable in a zone that is still there
        with DirectoryScans(*scanned_dirs(board)) as scans:
            source = SysfsSource(cfg_for(board.sysfs_root))
            source.open()
            samples = [source.read() for _ in range(5)]
            assert scans.counts() == dict.fromkeys(scanned_dirs(board), 1)
            for sample in samples:
                assert sample.temperatures_c == {"soc1": 45.0, "soc2": 44.5, "tj": 46.0}
                assert (sample.gpu_cur_mhz, sample.gpu_hw_max_mhz, sample.fan_pct) == (306.0, 1300.5, 27.1)
                assert sample.power_mw == pytest.approx(14597.472) and sample.cpu_cur_mhz == [1190.4] * 8
            # Readings still follow the board; only the paths were kept.
            board.set_gpu_freq(cur_hz=612_000_000)
            board.set_temp("tj", 71.0)
            board.set_fan_pwm(255)
            board.add_oc_events(2, 4)
            sample = source.read()
            assert (sample.gpu_cur_mhz, sample.temperatures_c["tj"], sample.fan_pct) == (612.0, 71.0, 100.0)
            assert sample.throttle == ["oc2"]
            assert scans.counts() == dict.fromkeys(scanned_dirs(board), 1)
    finally:
        board.close()


def test_sysfs_source_lists_the_board_again_when_a_node_vanishes(tmp_path):
    board = FakeBoard(tmp_path)
    source = SysfsSource(cfg_for(board.sysfs_root))
    source.open()
    source.read()
    with DirectoryScans(*scanned_dirs(board)) as scans:
        source.read()
        reload_drivers(board)
        board.set_gpu_freq(cur_hz=612_000_000)
        board.add_oc_events(2, 5)
        sample = source.read()  # finds the old paths gone, lists the board, reads the new ones
        assert (sample.gpu_cur_mhz, sample.gpu_hw_max_mhz, sample.throttle) == (612.0, 1300.5, ["oc2"])
        later = [source.read() for _ in range(3)]
        assert all(s.gpu_cur_mhz == 612.0 and s.throttle == [] for s in later)
        assert scans.counts() == dict.fromkeys(scanned_dirs(board), 1)
        (board.layout.devfreq_class.parent / "devfreq0").unlink()  # gone for good
        with pytest.raises(SourceUnavailable, match="no Jetson GPU devfreq node"):
            source.read()


def test_sysfs_source_reads_each_cpus_online_file_once_a_sample(tmp_path):
    """The CPU clocks and the clock-lock check share one read of which CPUs are online."""
    board = FakeBoard(tmp_path, power_mode="MODE_30W")  # four cores offline
    source = SysfsSource(cfg_for(board.sysfs_root))
    source.open()
    cpus = [board.layout.cpu / f"cpu{n}" for n in range(12)]
    with DirectoryScans(*cpus) as opens:
        sample = source.read()
        assert sample.cpu_cur_mhz == [1190.4] * 8 and sample.jetson_clocks is False
        assert opens.opens("online") == dict.fromkeys(cpus, 1)
        board.set_gpu_freq(min_hz=1300500000, max_hz=1300500000, cur_hz=1300500000)
        for cluster in (0, 4):  # the online cores' policies locked too
            for name in ("scaling_min_freq", "scaling_max_freq"):
                (board.layout.policy(cluster) / name).write_text("2201600\n")
        assert source.read().jetson_clocks is True
        assert opens.opens("online") == dict.fromkeys(cpus, 2)


def rescanning_source(board: FakeBoard, cls=SysfsSource, **kwargs):
    """A source whose periodic rescan is timed by a clock the test moves: (source, clock)."""
    clock = [1000.0]
    return cls(cfg_for(board.sysfs_root, rescan_interval_s=300), clock=lambda: clock[0], **kwargs), clock


def test_sysfs_source_finds_a_late_zone_and_rail_at_the_periodic_rescan(tmp_path):
    """A driver that loads after the scan (an INA3221, a thermal zone) vanishes nothing: only
    the periodic rescan finds it."""
    board = FakeBoard(tmp_path)
    source, clock = rescanning_source(board)
    with DirectoryScans(*scanned_dirs(board)) as scans:
        source.open()
        first = source.read()
        assert "tboard" not in first.temperatures_c and first.power_mw == pytest.approx(14597.472)
        board.add_thermal_zone("tboard-thermal", 33.0)
        board.add_ina3221("1-0042", [("VDD_SYS_EXTRA", 5000, 100)])
        clock[0] += 299.9
        before = source.read()
        assert "tboard" not in before.temperatures_c and before.power_mw == pytest.approx(14597.472)
        assert scans.counts() == dict.fromkeys(scanned_dirs(board), 1)
        clock[0] += 0.1
        after = source.read()
        assert after.temperatures_c["tboard"] == 33.0 and after.power_mw == pytest.approx(14597.472 + 500)
        later = [source.read() for _ in range(3)]
        assert all(s.temperatures_c["tboard"] == 33.0 for s in later)
        assert scans.counts() == dict.fromkeys(scanned_dirs(board), 2)  # one listing each per rescan


def test_sysfs_periodic_rescan_of_the_same_board_lists_each_directory_once(tmp_path):
    board = FakeBoard(tmp_path)
    source, clock = rescanning_source(board)
    source.open()
    expected = source.read()
    with DirectoryScans(*scanned_dirs(board)) as scans:
        for rescans in (1, 2, 3):
            clock[0] += 300
            samples = [source.read() for _ in range(3)]
            assert scans.counts() == dict.fromkeys(scanned_dirs(board), rescans)
            assert all(s.temperatures_c == expected.temperatures_c and s.power_mw == expected.power_mw
                       and s.gpu_hw_max_mhz == 1300.5 for s in samples)


def test_sysfs_periodic_rescan_off(tmp_path):
    board = FakeBoard(tmp_path)
    clock = [1000.0]
    source = SysfsSource(cfg_for(board.sysfs_root, rescan_interval_s=0), clock=lambda: clock[0])
    source.open()
    with DirectoryScans(*scanned_dirs(board)) as scans:
        source.read()
        board.add_thermal_zone("tboard-thermal", 33.0)
        clock[0] += 10 ** 7
        assert "tboard" not in source.read().temperatures_c
        assert scans.counts() == dict.fromkeys(scanned_dirs(board), 0)


def test_sysfs_without_a_gpu_node_is_unavailable(tmp_path):
    board = FakeBoard(tmp_path)
    board.remove_gpu()
    with pytest.raises(SourceUnavailable, match="no Jetson GPU devfreq node"):
        SysfsSource(cfg_for(board.sysfs_root)).open()


# ----------------------------------------------------------------- sampler


def test_sampler_sees_a_lowered_gpu_clock(tmp_path, sampler_factory):
    board = FakeBoard(tmp_path)
    sampler = sampler_factory(cfg_for(board.sysfs_root, sources=["sysfs"]))
    wait_for(lambda: sampler.latest(), what="a first sample")
    board.set_gpu_freq(min_hz=1300500000, max_hz=1300500000, cur_hz=1300500000)
    wait_for(lambda: sampler.latest().gpu_cur_mhz == 1300.5, what="locked clock")
    board.set_gpu_freq(cur_hz=612000000)
    sample = wait_for(lambda: (s := sampler.latest()) and s.gpu_cur_mhz == 612.0 and s, what="lowered clock")
    assert "gpu_below_min" in sample.throttle
    status = sampler.status()
    assert status["available"] and status["source"] == "sysfs" and status["age_s"] < 5
    assert status["summary"].startswith("sysfs, last sample")


def test_nearest_finds_no_sample_farther_than_the_configured_limit():
    """The one age limit on pairing a synthesis with a sample is telemetry.nearest_within_s."""
    samples = [TelemetrySample(monotonic=t, wall=t, source="sysfs") for t in (10.0, 20.0)]
    for within, expected in ((5.0, None), (8.0, samples[1])):
        buffer = TelemetryBuffer.for_config(TelemetryConfig(nearest_within_s=within))
        for sample in samples:
            buffer.append(sample)
        assert buffer.nearest(27.0) is expected


def test_nearest_picks_the_closest_buffered_sample(tmp_path, sampler_factory):
    board = FakeBoard(tmp_path)
    sampler = sampler_factory(cfg_for(board.sysfs_root, sources=["sysfs"]))
    wait_for(lambda: sampler.status()["samples"] >= 6, what="six samples")
    sampler.stop()
    samples = sampler.buffer.samples()
    middle = samples[3]
    assert sampler.buffer.nearest(middle.monotonic + 0.001) is middle
    assert sampler.buffer.nearest(samples[-1].monotonic + 100) is None  # too far from anything
    assert sampler.buffer.nearest(samples[-1].monotonic + 100, max_gap_s=1000) is samples[-1]
    assert sampler.latest() is None  # stopped: nothing live to show


def test_callbacks_get_samples_and_a_failing_one_does_not_stop_sampling(tmp_path, sampler_factory):
    board = FakeBoard(tmp_path)
    seen = []

    def broken(sample):
        raise RuntimeError("callback bug")

    sampler = sampler_factory(cfg_for(board.sysfs_root, sources=["sysfs"]), on_sample=[broken, seen.append])
    wait_for(lambda: len(seen) >= 3, what="three callbacks")
    assert all(s.source == "sysfs" for s in seen)


def test_no_source_means_unavailable_not_invented(tmp_path, sampler_factory):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = cfg_for(empty, sources=["sysfs", "nvml"])
    probe = __import__("ishowtts_edge.telemetry", fromlist=["NvmlSource"]).NvmlSource(cfg)
    try:
        probe.open()
    except SourceUnavailable:
        pass
    else:
        probe.close()
        pytest.skip("this machine has a working NVML GPU")
    sampler = sampler_factory(cfg)
    status = wait_for(lambda: (s := sampler.status())["source_errors"].keys() >= {"sysfs", "nvml"} and s,
                      what="both sources to fail")
    assert sampler.latest() is None and status["available"] is False and status["source"] is None
    assert "no Jetson GPU devfreq node" in status["source_errors"]["sysfs"]
    assert status["source_errors"]["nvml"].startswith(("NVML", "nvidia-ml-py"))
    assert status["summary"].startswith("unavailable (sysfs: no Jetson GPU devfreq node")


# ----------------------------------------------------------------- jtop


def test_jtop_source_maps_jtop_shapes(tmp_path):
    board = FakeBoard(tmp_path, power_mode="MODE_50W")
    cfg = cfg_for(board.sysfs_root)
    source = JtopSource(cfg, factory=FakeJtopService(board).factory)
    source.open()
    sample = source.read()
    reference = SysfsSource(cfg)
    reference.open()
    expected = reference.read()
    assert sample.source == "jtop"
    for name in ("gpu_cur_mhz", "gpu_min_mhz", "gpu_max_mhz", "gpu_hw_max_mhz", "cpu_cur_mhz", "emc_cur_mhz",
                 "nvpmodel_id", "nvpmodel_name", "jetson_clocks", "fan_pct"):
        assert getattr(sample, name) == getattr(expected, name), name
    assert sample.temperatures_c == expected.temperatures_c
    assert sample.power_mw == pytest.approx(expected.power_mw, abs=4)  # jtop rounds each rail to mW
    source.close()


def test_jtop_source_looks_up_the_gpu_maximum_once_and_again_when_its_gpus_change(tmp_path):
    board = FakeBoard(tmp_path)
    board.remove_gpu()  # early boot: jtop.service starts before the GPU's devfreq node exists
    service = FakeJtopService(board)
    devfreq_dir = board.layout.devfreq_class.parent
    source = JtopSource(cfg_for(board.sysfs_root), factory=service.factory)
    with DirectoryScans(devfreq_dir, board.sysfs_root / "sys/class/hwmon") as scans:
        source.open()
        first = [source.read() for _ in range(3)]
        assert all(s.gpu_cur_mhz is None and s.gpu_hw_max_mhz is None for s in first)
        board.layout.devfreq_class.symlink_to(board.layout.devfreq)
        service.kill()
        service.restart()  # a restarted jtop.service finds the GPU
        with pytest.raises(SourceUnavailable, match="Lost connection"):
            source.read()
        source.close()
        source.open()
        later = [source.read() for _ in range(3)]
        assert all(s.gpu_cur_mhz == 306.0 and s.gpu_hw_max_mhz == 1300.5 for s in later)
        assert scans.counts() == {devfreq_dir: 2, board.sysfs_root / "sys/class/hwmon": 2}
    source.close()


def test_jtop_source_without_a_gpu_looks_up_the_gpu_maximum_again_at_the_periodic_rescan(tmp_path):
    """jtop.service started before the GPU's devfreq node: it reports no GPU for good, and
    the hardware maximum from sysfs comes with the next periodic rescan."""
    board = FakeBoard(tmp_path)
    board.remove_gpu()
    service = FakeJtopService(board)
    devfreq_dir = board.layout.devfreq_class.parent
    source, clock = rescanning_source(board, JtopSource, factory=service.factory)
    with DirectoryScans(devfreq_dir) as scans:
        source.open()
        assert source.read().gpu_hw_max_mhz is None
        board.layout.devfreq_class.symlink_to(board.layout.devfreq)  # the driver loads; jtop still sees no GPU
        clock[0] += 299.9
        assert [source.read().gpu_hw_max_mhz for _ in range(3)] == [None] * 3
        assert scans.counts() == {devfreq_dir: 1}
        clock[0] += 0.1
        samples = [source.read() for _ in range(3)]
        assert all(s.gpu_hw_max_mhz == 1300.5 and s.gpu_cur_mhz is None for s in samples)
        assert scans.counts() == {devfreq_dir: 2}
    source.close()


def test_jtop_death_falls_back_to_sysfs_and_comes_back(tmp_path, sampler_factory, caplog):
    board = FakeBoard(tmp_path)
    service = FakeJtopService(board)
    cfg = cfg_for(board.sysfs_root, sources=["jtop", "sysfs"])
    sampler = sampler_factory(cfg, source_factories=jtop_sources(service, cfg))
    wait_for(lambda: (s := sampler.latest()) and s.source == "jtop", what="jtop samples")

    service.kill()
    wait_for(lambda: (s := sampler.latest()) and s.source == "sysfs", what="fallback to sysfs")
    status = sampler.status()
    assert status["source"] == "sysfs"
    assert "Lost connection with jtop server" in status["source_errors"]["jtop"]
    assert any(sw["from"] == "jtop" and sw["to"] is None for sw in status["switches"])
    assert any("source=sysfs" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)

    service.restart()
    wait_for(lambda: (s := sampler.latest()) and s.source == "jtop", what="jtop again")
    assert service.clients[0]._closed  # the dead client was closed, a new one made
    assert len(service.clients) >= 2
    sampler.stop()
    assert service.clients[-1]._closed


def test_jtop_that_connects_but_sends_nothing_is_retried_with_growing_delays(tmp_path, sampler_factory, caplog):
    """Opening is not working: before, every successful open reset the back-off, so a stalled
    jtop.service was reconnected (and a costly client built) every retry, with a warning each."""
    caplog.set_level(logging.INFO, logger="ishowtts_edge.telemetry")
    board = FakeBoard(tmp_path)
    service = FakeJtopService(board)
    service.stalled = True
    cfg = cfg_for(board.sysfs_root, sources=["jtop", "sysfs"], reconnect_min_s=0.05, reconnect_max_s=1.6)
    sampler = sampler_factory(cfg, source_factories=jtop_sources(service, cfg))
    wait_for(lambda: (s := sampler.latest()) and s.source == "sysfs", what="fallback to sysfs")
    time.sleep(3.0)
    # Delays 0.05, 0.1, 0.2, 0.4, 0.8, 1.6 s: about 7 clients in 3 s; a reset back-off made 30 or more.
    assert 3 <= len(service.clients) <= 10, len(service.clients)
    lost = [r for r in caplog.records if "telemetry source lost" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(lost) == 1, [r.getMessage() for r in lost]
    # The fallback to sysfs is news once, not on every round of the same failure.
    warnings = [r.getMessage() for r in caplog.records if r.name == "ishowtts_edge.telemetry" and r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # "lost jtop" and "source sysfs", once each
    assert "no data" in sampler.status()["source_errors"]["jtop"]

    service.stalled = False  # samples again: the source is back, its error and back-off forgotten
    wait_for(lambda: (s := sampler.latest()) and s.source == "jtop", timeout=10, what="jtop again")
    wait_for(lambda: "jtop" not in sampler.status()["source_errors"], what="jtop error cleared")
    assert "jtop" not in sampler._backoff
    assert any("telemetry source delivering again" in r.getMessage() and "source=jtop" in r.getMessage()
               and r.levelno == logging.INFO for r in caplog.records)  # its quiet reopening is reported once it works


def test_hung_jtop_service_leaves_one_connect_thread_however_many_retries(tmp_path, sampler_factory, monkeypatch):
    """jetson-stats' close() does not end a start() the service never answers: one thread, one client."""
    import threading

    monkeypatch.setattr(JtopSource, "START_TIMEOUT_S", 0.1)
    board = FakeBoard(tmp_path)
    service = FakeJtopService(board)
    service.answering.clear()
    cfg = cfg_for(board.sysfs_root, sources=["jtop", "sysfs"], reconnect_min_s=0.05, reconnect_max_s=0.1)
    sampler = sampler_factory(cfg, source_factories=jtop_sources(service, cfg))
    wait_for(lambda: (s := sampler.latest()) and s.source == "sysfs", what="fallback to sysfs")
    wait_for(lambda: "still unanswered" in sampler.status()["source_errors"].get("jtop", ""), what="pending connect reported")
    time.sleep(1.0)  # about ten retries
    assert sum(t.name == "jtop-connect" for t in threading.enumerate()) == 1
    assert len(service.clients) == 1

    service.answering.set()  # the service answers at last: the stuck start() returns, a retry connects
    wait_for(lambda: (s := sampler.latest()) and s.source == "jtop", what="jtop after the hang")
    assert not any(t.name == "jtop-connect" and t.is_alive() for t in threading.enumerate())
    # Its late start() set the abandoned client running again (jetson-stats does): closed once more.
    assert service.clients[0]._closed and not service.clients[-1]._closed


def test_jtop_version_mismatch_is_reported_and_sysfs_used(tmp_path, sampler_factory):
    board = FakeBoard(tmp_path)
    service = FakeJtopService(board, version="7.1.0")
    cfg = cfg_for(board.sysfs_root, sources=["jtop", "sysfs"])
    sampler = sampler_factory(cfg, source_factories=jtop_sources(service, cfg))
    wait_for(lambda: (s := sampler.latest()) and s.source == "sysfs", what="sysfs samples")
    assert "Mismatch version jtop service: [7.1.0]" in sampler.status()["source_errors"]["jtop"]


@pytest.mark.skipif(os.path.exists("/run/jtop.sock"), reason="a real jtop.service runs here")
def test_real_jtop_client_without_service_falls_back_to_sysfs(tmp_path, sampler_factory):
    board = FakeBoard(tmp_path)
    sampler = sampler_factory(cfg_for(board.sysfs_root, sources=["jtop", "sysfs"]))
    wait_for(lambda: (s := sampler.latest()) and s.source == "sysfs", what="sysfs samples")
    assert "The jtop.service is not active" in sampler.status()["source_errors"]["jtop"]


def test_real_jtop_factory_builds_no_client_without_the_service_socket(tmp_path, monkeypatch):
    """No socket, no jtop(): its constructor starts a library-probing thread that competed with
    the synthesis worker for the GIL on every retry (sixth session, H200)."""
    import socket
    import threading

    from ishowtts_edge.telemetry import jtop as telemetry

    path = tmp_path / "jtop.sock"
    monkeypatch.setattr(telemetry, "JTOP_SOCKET", path)
    threads = threading.active_count()
    with pytest.raises(SourceUnavailable, match="The jtop.service is not active"):
        telemetry._real_jtop_factory(1.0)
    assert threading.active_count() == threads  # no client, so no probing thread
    path.write_text("")  # a stale plain file is no service either
    with pytest.raises(SourceUnavailable, match=f"no socket at {path}"):
        telemetry._real_jtop_factory(1.0)
    path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen()
        client = telemetry._real_jtop_factory(1.0)  # a socket: the real client is built (not started)
        try:
            assert type(client).__name__ == "jtop" and hasattr(client, "start")
        finally:
            client.close()
    finally:
        listener.close()


# ----------------------------------------------------------------- direct reads (tools)


def test_direct_source_prefers_the_boards_sysfs(tmp_path):
    from ishowtts_edge.telemetry import open_direct_source

    board = FakeBoard(tmp_path)
    board.set_gpu_freq(cur_hz=1_300_500_000)
    source = open_direct_source(cfg_for(board.sysfs_root))
    assert source is not None and source.name == "sysfs"
    assert source.read().gpu_cur_mhz == pytest.approx(1300.5)


def test_direct_source_is_none_where_nothing_opens(tmp_path, monkeypatch):
    from ishowtts_edge import telemetry

    def no_nvml(self):  # a host without NVML's library, as on CI
        raise SourceUnavailable("NVML: NVML Shared Library Not Found")

    monkeypatch.setattr(telemetry.NvmlSource, "open", no_nvml)
    assert telemetry.open_direct_source(cfg_for(tmp_path / "empty")) is None


# ----------------------------------------------------------------- first pass (what READY waits for)


def test_wait_settled_after_a_sample_or_after_every_source_failed(tmp_path, sampler_factory):
    board = FakeBoard(tmp_path)
    sampler = sampler_factory(cfg_for(board.sysfs_root, sources=["sysfs"], interval_s=5.0))
    assert sampler.wait_settled(10.0)
    assert sampler.latest() is not None and sampler.latest().source == "sysfs"  # settled = sampled here

    nothing = sampler_factory(cfg_for(tmp_path / "no-board", sources=["sysfs"], interval_s=5.0))
    assert nothing.wait_settled(10.0)
    assert nothing.latest() is None and "sysfs" in nothing.status()["source_errors"]


def test_wait_settled_gives_up_on_a_source_that_hangs(tmp_path, sampler_factory):
    import threading

    release = threading.Event()

    class Hanging(SysfsSource):
        def open(self) -> None:
            release.wait(30)  # a jtop.service that accepts the connection and never answers
            super().open()

    board = FakeBoard(tmp_path)
    cfg = cfg_for(board.sysfs_root, sources=["sysfs"], interval_s=5.0)
    sampler = TelemetrySampler(cfg, source_factories={"sysfs": lambda: Hanging(cfg)})
    assert not sampler.wait_settled(0.01)  # not started: nothing settles
    sampler.start()
    try:
        assert not sampler.wait_settled(0.3)
        release.set()
        assert sampler.wait_settled(10.0) and sampler.latest() is not None
    finally:
        release.set()
        sampler.stop()
