"""Prometheus metrics, end to end: the daemon on the fake board writes its textfile, a real
node_exporter (Debian's prometheus-node-exporter) serves it on loopback, and promtool checks
the exposition.  .ci/run installs both packages; elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ishowtts_edge.bench.daemon_process import stop_process
import zmq
from fakes import orin
from fakes.board import FakeBoard
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, DaemonProcess
from ishowtts_edge.client import Client, ClientError
from ishowtts_edge.config import ConfigError, MetricsConfig, PathsConfig, Settings, load_settings
from ishowtts_edge.daemon import Daemon
from ishowtts_edge.metrics import DAEMON_LABEL, TEXTFILE_NAME, Metrics, TextfileWriter

PROMTOOL = shutil.which("promtool")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(Debian package prometheus; .ci/run installs it)")
needs_node_exporter = pytest.mark.skipif(NODE_EXPORTER is None, reason="node_exporter not installed "
                                         "(Debian package prometheus-node-exporter; .ci/run installs it)")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted labels): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, metric: str, /, **labels: str) -> float | None:
    """The sample of ``metric`` with exactly ``labels``; the daemon label is compared only when given
    (a test daemon is not at the packaged endpoint, so its series carry one)."""
    found = [v for (name, key), v in samples(text).items() if name == metric
             and dict(kv for kv in key if DAEMON_LABEL in labels or kv[0] != DAEMON_LABEL) == labels]
    assert len(found) <= 1, f"{metric}{labels} names {len(found)} series"
    return found[0] if found else None


def textfile_of(proc: DaemonProcess) -> Path:
    """The file the daemon writes, as its status reports it."""
    with Client(proc.endpoint, timeout_s=60) as client:
        return Path(client.status()["metrics"]["textfile"])


class NodeExporter:
    """Debian's node_exporter on a free loopback port, only its textfile collector on."""

    def __init__(self, textfile_dir: Path, log_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._log = open(log_path, "wb")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{self.port}", "--collector.disable-defaults",
             "--collector.textfile", f"--collector.textfile.directory={textfile_dir}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.scrape()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"node_exporter did not start: {log_path.read_text()}") from None
                time.sleep(0.1)

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as reply:
            return reply.read().decode()

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.scrape()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                ours = "\n".join(line for line in text.splitlines() if "ishowtts_" in line or "textfile" in line)
                raise AssertionError(f"node_exporter never showed {what} in {timeout}s:\n{ours[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self._log.close()


@pytest.fixture(scope="module")
def board_daemon(tmp_path_factory, demo_cache):
    """The daemon on the fake board (telemetry from its sysfs, no hwctl), textfile every 0.1 s."""
    tmp = tmp_path_factory.mktemp("metrics")
    board = FakeBoard(tmp)
    textfile_dir = tmp / "metrics"
    textfile_dir.mkdir()
    config = tmp / "edge.toml"
    config.write_text(f"""
[hardware]
enabled = false

[telemetry]
sources = ["sysfs"]
sysfs_root = "{board.sysfs_root}"
interval_s = 0.1

[monitor]
telemetry_confirm = 2

[metrics]
textfile_dir = "{textfile_dir}"
interval_s = 0.1
""")
    old = os.umask(0o007)  # the unit's UMask=: the textfile must still be readable by node_exporter's user
    try:
        proc = DaemonProcess(tmp, demo_cache, config=config)
    finally:
        os.umask(old)
    try:
        proc.wait_ready()
        yield proc, board, textfile_dir
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def exporter(board_daemon, tmp_path_factory):
    if NODE_EXPORTER is None:
        pytest.skip("node_exporter not installed (Debian package prometheus-node-exporter; .ci/run installs it)")
    _, _, textfile_dir = board_daemon
    ne = NodeExporter(textfile_dir, tmp_path_factory.mktemp("node-exporter") / "node_exporter.log")
    yield ne
    ne.stop()


def cli(proc: DaemonProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ishowtts_edge.cli", "--endpoint", proc.endpoint, *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=proc.env)


@needs_promtool
def test_the_metrics_command_and_the_textfile_pass_promtool_check_metrics(board_daemon):
    proc, _, textfile_dir = board_daemon
    with Client(proc.endpoint, timeout_s=120) as client:
        client.synthesize("Metrics for promtool.", seed=1)
    out = cli(proc, "metrics")
    assert out.returncode == 0, out.stderr
    assert "ishowtts_requests_total" in out.stdout and "ishowtts_temperature_celsius" in out.stdout
    for text in (out.stdout, textfile_of(proc).read_text()):
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "_created" not in text  # no doubled series in a file read every scrape


@needs_node_exporter
def test_node_exporter_serves_counters_that_move_with_the_requests_sent(board_daemon, exporter):
    proc, _, _ = board_daemon
    ok = {"op": "synthesize", "code": "ok"}
    before = exporter.wait_for(lambda t: value(t, "ishowtts_requests_total", **ok) is not None, what="the counters")
    assert value(before, "node_textfile_scrape_error") == 0
    assert value(before, "ishowtts_state", state="ready") == 1
    assert value(before, "ishowtts_state", state="loading") == 0
    n0 = value(before, "ishowtts_requests_total", **ok)
    audio0 = value(before, "ishowtts_audio_seconds_total", voice="demo") or 0.0
    rtf0 = value(before, "ishowtts_rtf_count") or 0.0
    with Client(proc.endpoint, timeout_s=120) as client:
        results = [client.synthesize("Counting requests for Prometheus.", seed=i) for i in range(2)]
    audio = sum(r.header["audio_seconds"] for r in results)

    after = exporter.wait_for(lambda t: value(t, "ishowtts_requests_total", **ok) == n0 + 2, what="two more requests")
    assert value(after, "ishowtts_audio_seconds_total", voice="demo") == pytest.approx(audio0 + audio, rel=1e-3)
    assert value(after, "ishowtts_rtf_count") == rtf0 + 2
    for name in ("ishowtts_request_duration_seconds", "ishowtts_time_to_first_audio_seconds",
                 "ishowtts_synthesis_duration_seconds", "ishowtts_queue_duration_seconds"):
        assert value(after, f"{name}_count") >= value(before, f"{name}_count") + 2, name
        assert value(after, f"{name}_bucket", le="+Inf") == value(after, f"{name}_count"), name
    assert value(after, "ishowtts_queue_depth") == 0
    assert value(after, "ishowtts_warmup_seconds") > 0
    # Telemetry from the fake board's sysfs, in base units.
    assert value(after, "ishowtts_telemetry_available", source="sysfs") == 1
    assert value(after, "ishowtts_gpu_clock_hertz") in orin.GPU_FREQS_HZ
    assert value(after, "ishowtts_gpu_clock_max_hertz") == orin.GPU_FREQS_HZ[-1]
    assert value(after, "ishowtts_power_mode_id", name="MAXN") == 0
    assert value(after, "ishowtts_temperature_celsius", zone="tj") is not None


@needs_node_exporter
def test_a_request_error_increments_the_counter_of_its_code(board_daemon, exporter):
    proc, _, _ = board_daemon
    unknown_voice = {"op": "synthesize", "code": "unknown_voice"}
    bad = {"op": "unknown", "code": "bad_request"}
    before = exporter.scrape()
    with Client(proc.endpoint, timeout_s=60) as client:
        with pytest.raises(ClientError) as err:
            client.synthesize("Nobody speaks like this.", voice="no-such-voice")
        assert err.value.code == "unknown_voice"
    sock = zmq.Context.instance().socket(zmq.REQ)
    try:
        sock.connect(proc.endpoint)
        sock.send(b"{not json")
        assert sock.poll(30000)
        assert json.loads(sock.recv())["error"]["code"] == "bad_request"
    finally:
        sock.close(linger=0)
    after = exporter.wait_for(
        lambda t: value(t, "ishowtts_requests_total", **unknown_voice) == (value(before, "ishowtts_requests_total",
                                                                                  **unknown_voice) or 0) + 1
        and value(t, "ishowtts_requests_total", **bad) == (value(before, "ishowtts_requests_total", **bad) or 0) + 1,
        what="the unknown_voice and bad_request counters")
    # Labels stay bounded: the unknown voice's name is in no series.
    assert "no-such-voice" not in after


@needs_node_exporter
def test_an_alert_raised_on_the_fake_board_shows_as_an_active_alert_series(board_daemon, exporter):
    _, board, _ = board_daemon
    series = {"cause": "power_mode_changed", "severity": "warning"}
    assert value(exporter.scrape(), "ishowtts_alerts_active", **series) == 0
    orin.apply_mode(board.layout, orin.mode_by_name("MODE_50W"))  # someone ran nvpmodel -m 3
    try:
        text = exporter.wait_for(lambda t: value(t, "ishowtts_alerts_active", **series) == 1,
                                 what="the power_mode_changed alert")
        assert value(text, "ishowtts_power_mode_id", name="MODE_50W") == 3
        assert value(text, "ishowtts_power_mode_expected_id") == 0
    finally:
        orin.apply_mode(board.layout, orin.mode_by_name("MAXN"))
    exporter.wait_for(lambda t: value(t, "ishowtts_alerts_active", **series) == 0, what="the alert cleared")


def test_the_textfile_is_replaced_by_rename_never_read_half_written(board_daemon):
    proc, _, textfile_dir = board_daemon
    path = textfile_of(proc)
    assert path.parent == textfile_dir
    assert path.stat().st_mode & 0o777 == 0o644  # readable by node_exporter's user despite UMask=0007
    inodes, reads, bad = set(), 0, []
    stop = threading.Event()

    def load() -> None:  # keep the writer busy with requests while reading
        with Client(proc.endpoint, timeout_s=60) as client:
            while not stop.is_set():
                client.status()

    loader = threading.Thread(target=load)
    loader.start()
    try:
        # Until six rewrites were seen (a loaded machine writes less often), bounded by a deadline.
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and len(inodes) <= 5:
            with open(path, "rb") as f:  # what the collector does: open, read whole
                inodes.add(os.fstat(f.fileno()).st_ino)
                text = f.read().decode()
            reads += 1
            try:
                names = {family.name for family in text_string_to_metric_families(text)}
            except Exception as exc:  # noqa: BLE001 - a torn file fails to parse
                bad.append(f"unparseable: {exc}")
                continue
            if not text.endswith("\n") or not {"ishowtts_requests", "ishowtts_alerts_active",
                                               "ishowtts_telemetry_available"} <= names:
                bad.append(f"incomplete: {sorted(names)}")
            listing = sorted(p.name for p in textfile_dir.iterdir() if p.name.endswith(".prom"))
            if listing != [path.name]:
                bad.append(f"other .prom files: {listing}")
    finally:
        stop.set()
        loader.join()
    assert not bad, bad[:3]
    assert len(inodes) > 5, f"the file was rewritten in place, not replaced ({len(inodes)} inodes in {reads} reads)"


@needs_node_exporter
def test_stopping_the_daemon_leaves_no_textfile_behind(board_daemon, exporter):
    proc, _, textfile_dir = board_daemon
    assert textfile_of(proc).exists()
    assert proc.stop() == 0
    assert sorted(p.name for p in textfile_dir.iterdir()) == []  # neither the file nor its temporary
    text = exporter.scrape()
    assert "ishowtts_" not in text
    assert value(text, "node_textfile_scrape_error") == 0


# -- the writer on its own: a real Daemon object (not running) as the source of figures --------------


def writer(tmp_path: Path, textfile_dir: Path) -> TextfileWriter:
    settings = Settings(metrics=MetricsConfig(textfile_dir=textfile_dir, interval_s=0.1))
    daemon = Daemon(settings)
    return TextfileWriter(Metrics(daemon), settings.metrics)


def test_a_missing_directory_is_reported_once_at_info_and_written_when_it_appears(tmp_path, caplog):
    w = writer(tmp_path, tmp_path / "node-exporter")
    with caplog.at_level(logging.INFO, logger="ishowtts_edge.metrics"):
        assert not w.write_once() and not w.write_once()
        assert not (tmp_path / "node-exporter").exists()  # never created: it belongs to node_exporter
        missing = [r for r in caplog.records if "not written" in r.getMessage()]
        assert len(missing) == 1 and missing[0].levelno == logging.INFO
        assert "does not exist" in w.status()["problem"]
        (tmp_path / "node-exporter").mkdir()
        assert w.write_once()
    assert "ishowtts_state" in (tmp_path / "node-exporter" / TEXTFILE_NAME).read_text()
    assert w.status()["written"] and w.status()["problem"] is None
    assert any("written again" in r.getMessage() for r in caplog.records)


def test_an_unwritable_directory_is_a_warning_naming_the_fix_once(tmp_path, caplog):
    directory = tmp_path / "node-exporter"
    directory.mkdir()
    (directory / f".{TEXTFILE_NAME}.tmp").mkdir()  # even root cannot open a directory for writing
    w = writer(tmp_path, directory)
    with caplog.at_level(logging.INFO, logger="ishowtts_edge.metrics"):
        assert not w.write_once() and not w.write_once()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ReadWritePaths" in warnings[0].getMessage()
    assert not (directory / TEXTFILE_NAME).exists()


def _operations_monitoring() -> str:
    text = (REPO / "docs" / "operations.md").read_text()
    return text.split("\n## Monitoring\n", 1)[1].split("\n## ", 1)[0]


@needs_promtool
def test_the_documented_alert_rules_and_queries_pass_promtool(tmp_path):
    section = _operations_monitoring()
    rules = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert rules.count("- alert:") == 3
    (tmp_path / "alerts.yml").write_text(rules)
    # The queries, each as a recording rule: promtool parses every expression.
    block = section.split("### Looking without Grafana", 1)[1]
    lines = [line[4:] for line in block.splitlines() if line.startswith("    ") and not line.startswith("    #")]
    queries, current = [], ""
    for line in lines:
        if line.startswith("  ") and current:  # a continued expression
            current += " " + line.strip()
            continue
        if current:
            queries.append(current)
        current = line.strip()
    queries.append(current)
    assert len(queries) >= 10
    recording = {"groups": [{"name": "docs", "rules": [{"record": f"docs:query{i}", "expr": q}
                                                         for i, q in enumerate(queries)]}]}
    (tmp_path / "queries.yml").write_text(json.dumps(recording))  # JSON is YAML
    for name in ("alerts.yml", "queries.yml"):
        check = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / name)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, f"{name}:\n{check.stdout}{check.stderr}"


def writers_of_two_daemons(textfile_dir: Path) -> list[TextfileWriter]:
    """The packaged daemon and a second one on another runtime directory (so another endpoint) of one host."""
    out = []
    for runtime in ("/run/ishowtts-edge", "/run/ishowtts-edge-b"):
        settings = Settings(paths=PathsConfig(runtime_dir=Path(runtime)),
                            metrics=MetricsConfig(textfile_dir=textfile_dir, interval_s=0.1))
        out.append(TextfileWriter(Metrics(Daemon(settings)), settings.metrics))
    return out


def test_two_daemons_on_one_host_write_two_files_whose_series_differ_by_the_daemon_label(tmp_path):
    """One fixed file name: the second daemon overwrote the first's figures every few seconds."""
    textfile_dir = tmp_path / "node-exporter"
    textfile_dir.mkdir()
    first, second = writers_of_two_daemons(textfile_dir)
    assert first.write_once() and second.write_once()
    assert first.path == textfile_dir / TEXTFILE_NAME  # the packaged daemon's file and series are unchanged
    assert second.path == textfile_dir / "ishowtts-edge-run_ishowtts-edge-b.prom"
    assert sorted(p.name for p in textfile_dir.iterdir()) == sorted([first.path.name, second.path.name])
    one, two = samples(first.path.read_text()), samples(second.path.read_text())
    assert all(DAEMON_LABEL not in dict(labels) for _, labels in one)
    assert all(dict(labels)[DAEMON_LABEL] == "run_ishowtts-edge-b" for _, labels in two)
    # node_exporter serves every file as one exposition: no series may be in both.
    assert not set(one) & set(two) and len(one) == len(two)
    first.stop()
    assert sorted(p.name for p in textfile_dir.iterdir()) == [second.path.name]  # each removes only its own


@needs_node_exporter
def test_node_exporter_serves_the_series_of_two_daemons_on_one_host(tmp_path):
    textfile_dir = tmp_path / "node-exporter"
    textfile_dir.mkdir()
    for writer_ in writers_of_two_daemons(textfile_dir):
        assert writer_.write_once()
    ne = NodeExporter(textfile_dir, tmp_path / "node_exporter.log")
    try:
        text = ne.scrape()
    finally:
        ne.stop()
    assert value(text, "node_textfile_scrape_error") == 0
    starting = {(dict(labels).get(DAEMON_LABEL), v) for (name, labels), v in samples(text).items()
                if name == "ishowtts_state" and dict(labels)["state"] == "starting"}
    assert starting == {(None, 1.0), ("run_ishowtts-edge-b", 1.0)}
    assert "collected before" not in ne.log_path.read_text()  # how node_exporter drops a duplicate series


def test_a_daemon_named_in_its_config_writes_that_name_and_a_name_that_is_no_file_name_is_refused(tmp_path):
    textfile_dir = tmp_path / "node-exporter"
    textfile_dir.mkdir()
    settings = Settings(metrics=MetricsConfig(textfile_dir=textfile_dir, name="kitchen"))
    w = TextfileWriter(Metrics(Daemon(settings)), settings.metrics)
    assert w.write_once() and w.path.name == "ishowtts-edge-kitchen.prom"
    assert value(w.path.read_text(), "ishowtts_ready", daemon="kitchen") == 0
    config = tmp_path / "c.toml"
    config.write_text('[metrics]\nname = "../kitchen"\n')
    with pytest.raises(ConfigError, match="metrics.name"):
        load_settings(config)


@pytest.mark.parametrize("value", ["", "metrics", "/tmp/a\\u0000b"])
def test_a_textfile_dir_that_is_not_an_absolute_path_is_a_configuration_error(tmp_path, value):
    """"" is Path("."): the daemon wrote its figures into whatever its working directory was."""
    config = tmp_path / "c.toml"
    config.write_text(f'[metrics]\ntextfile_dir = "{value}"\n')
    r = subprocess.run([sys.executable, "-m", "ishowtts_edge.cli", "--config", str(config), "serve"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO), "ISHOWTTS_EDGE_PATHS__RUNTIME_DIR": str(tmp_path / "run")})
    assert r.returncode == 78, r.stderr
    assert "metrics.textfile_dir" in r.stderr and "absolute" in r.stderr
