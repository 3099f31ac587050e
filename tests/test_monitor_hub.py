"""MonitorHub: what the daemon calls, and what reaches the journal and the STATUS line."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest

from ishowtts_edge.config import MonitorConfig, TelemetryConfig, load_settings
from ishowtts_edge.engine import SynthesisResult
from ishowtts_edge.logs import SyslogPrefixFormatter
from ishowtts_edge.monitor import MonitorHub
from ishowtts_edge.status import render_monitor
from ishowtts_edge.telemetry import TelemetryBuffer
from monitor_sim import BoardState, FakeClock, Simulator


@pytest.fixture
def journal():
    """The monitor's log lines exactly as journald would receive them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SyslogPrefixFormatter())
    log = logging.getLogger("ishowtts_edge.monitor")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield stream
    log.removeHandler(handler)
    log.setLevel(old_level)


def make_hub(cfg=None, **kw):
    clock = FakeClock()
    sim = Simulator(31, clock)
    hub = MonitorHub(cfg or MonitorConfig(), clock=clock, wall_clock=sim.wall, **kw)
    return hub, sim


def result_for(rec) -> SynthesisResult:
    samples = int(round(rec.audio_seconds * 24000))
    return SynthesisResult(audio=np.zeros(samples, dtype=np.float32), sample_rate=24000,
                           synthesis_seconds=rec.synthesis_seconds, mel_frames=rec.mel_frames,
                           nfe_step=rec.nfe_step, chunks=rec.chunks)


def feed(hub, sim, state, count):
    events = []
    for _ in range(count):
        rec = sim.one(state)
        events += hub.on_telemetry(rec.telemetry)
        events += hub.on_synthesis(result_for(rec), rec.telemetry, request_id=rec.request_id)
    return events


def test_journal_gets_one_greppable_line_per_raise_and_clear(journal):
    hub, sim = make_hub()
    feed(hub, sim, BoardState(), 60)
    feed(hub, sim, BoardState(gpu_cur_mhz=800.0), 30)
    feed(hub, sim, BoardState(), 40)
    lines = [l for l in journal.getvalue().splitlines() if "event=alert_" in l]
    assert len(lines) == 2
    raised, cleared = lines
    assert raised.startswith("<3>monitor: ERROR clock_drift: synthesis +")
    for field in ("event=alert_raised", "cause=clock_drift", "severity=error", "gpu_cur_mhz=800",
                  "gpu_max_mhz=1300", "jetson_clocks=True", "nvpmodel=MAXN"):
        assert field in raised
    assert cleared.startswith("<6>monitor: alert cleared event=alert_cleared")
    # Clearing reports the figures at clearing time and how bad it got.
    assert "duration_s=" in cleared and "peak_slowdown=0.6" in cleared and "gpu_cur_mhz=1300" in cleared
    assert "baseline learned" in journal.getvalue()


def test_warning_severity_goes_to_the_journal_as_warning(journal):
    hub, sim = make_hub()
    feed(hub, sim, BoardState(), 60)
    feed(hub, sim, BoardState(load=1.25), 20)
    lines = [l for l in journal.getvalue().splitlines() if "event=alert_raised" in l]
    assert len(lines) == 1 and lines[0].startswith("<4>monitor: WARNING unknown:")


def test_status_line_tracks_learning_health_and_alerts():
    hub, sim = make_hub()
    assert hub.status_line() == "RTF: learning baseline"
    feed(hub, sim, BoardState(), 5)
    assert hub.status_line().endswith("learning baseline 5/30")
    feed(hub, sim, BoardState(), 55)
    healthy = hub.status_line()
    assert healthy.startswith("RTF 0.") and "(n=50)" in healthy and "x baseline" in healthy
    feed(hub, sim, BoardState(jetson_clocks=False, unlocked_jitter=True), 20)
    line = hub.status_line()
    assert line.startswith("ERROR clocks_off: synthesis +") and line.endswith("(+1 more)")
    assert "\n" not in line


def test_window_statistics_are_computed_once_until_the_window_changes(monkeypatch):
    from ishowtts_edge.monitor import detector

    hub, sim = make_hub()
    computed = []
    real_stats = detector.stats
    monkeypatch.setattr(detector, "stats", lambda values: computed.append(list(values)) or real_stats(values))

    feed(hub, sim, BoardState(), 10)  # learning: the RTF statistics only, no baseline ratios yet
    computed.clear()
    status = hub.status()
    assert status["status_line"] == f"RTF {status['window']['median_rtf']:.2f} (n=10), learning baseline 10/30"
    assert len(computed) == 1
    hub.status()
    hub.status_line()
    hub.publish_state()
    assert len(computed) == 1  # nothing new in the window: nothing computed again

    feed(hub, sim, BoardState(), 50)  # learned: ratios and RTF statistics
    computed.clear()
    status = hub.status()
    assert status["window"]["n"] == 50 and "x baseline" in status["status_line"]
    assert len(computed) == 2 and computed[0] != computed[1]
    assert hub.status() == status and len(computed) == 2

    feed(hub, sim, BoardState(), 1)  # a new record
    computed.clear()
    newer = hub.status()
    assert len(computed) == 2 and newer["window"]["last_rtf"] != status["window"]["last_rtf"]

    sim.clock.advance(MonitorConfig().window_age_s + 1)  # every record ages out of the window
    computed.clear()
    aged = hub.status()
    assert aged["window"]["n"] == 0 and aged["status_line"] == "RTF: no syntheses yet" and computed == []


def test_status_is_strict_json_with_remediation_state():
    hub, sim = make_hub(apply_fn=lambda: {"ok": True}, background_remediation=False)
    feed(hub, sim, BoardState(), 60)
    feed(hub, sim, BoardState(gpu_cur_mhz=700.0), 20)
    status = hub.status()
    assert json.loads(json.dumps(status, allow_nan=False)) == status
    assert status["remediation"]["attempts"] == 1
    assert status["remediation"]["last_outcome"]["outcome"] in ("applied", "clocks_restored")
    assert status["active_alerts"][0]["cause"] == "clock_drift"
    assert status["status_line"].startswith("ERROR clock_drift")


def test_bad_result_is_logged_and_skipped_without_raising(journal):
    hub, sim = make_hub()
    feed(hub, sim, BoardState(), 10)
    empty = SynthesisResult(audio=np.zeros(0, dtype=np.float32), sample_rate=24000, synthesis_seconds=0.3,
                            mel_frames=10, nfe_step=7)
    assert hub.on_synthesis(empty, None, request_id="bad-1") == []
    assert hub.on_synthesis(object(), None, request_id="bad-2") == []  # not a result at all
    text = journal.getvalue()
    assert "<4>monitor: synthesis not monitored request_id=bad-1" in text and "audio_seconds=0.0" in text
    assert "request_id=bad-2" in text
    status = hub.status()
    assert status["window"]["n"] == 10 and status["records_rejected"] == 1


def test_calibrate_with_bad_points_falls_back_to_learning(journal):
    hub, _ = make_hub()
    assert hub.calibrate([(100, 7)]) is None
    assert "calibration ignored" in journal.getvalue()
    assert hub.calibrate([(128, 7, 0.38), (512, 7, 1.14)]).source == "warmup"


def test_a_failing_publisher_never_breaks_monitoring(journal):
    class DeadSink:
        def publish(self, topic, payload):
            raise OSError("socket gone")

    hub, sim = make_hub(publisher=DeadSink())
    feed(hub, sim, BoardState(), 60)
    events = feed(hub, sim, BoardState(gpu_cur_mhz=800.0), 20)
    assert [e.action for e in events][:1] == ["raised"]
    assert "event not published topic=alert.raised" in journal.getvalue()


def test_disabled_monitor_does_nothing():
    hub, sim = make_hub(MonitorConfig(enabled=False))
    assert feed(hub, sim, BoardState(gpu_cur_mhz=500.0), 60) == []
    assert hub.status() == {"enabled": False}
    assert hub.status_line() == "RTF monitor off"


def test_monitor_settings_load_from_toml_and_env(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[monitor]\ncv_threshold = 0.08\nremediate = false\n")
    monkeypatch.setenv("ISHOWTTS_EDGE_MONITOR__WINDOW_COUNT", "80")
    settings = load_settings(path)
    assert (settings.monitor.cv_threshold, settings.monitor.remediate, settings.monitor.window_count) == (0.08, False, 80)


def test_error_thresholds_below_warning_thresholds_are_rejected():
    with pytest.raises(ValueError, match="slowdown_error_threshold must be >= slowdown_threshold"):
        MonitorConfig(slowdown_threshold=0.3, slowdown_error_threshold=0.2)



def test_hub_pairs_each_synthesis_with_the_telemetry_sample_nearest_its_middle():
    buffer = TelemetryBuffer.for_config(TelemetryConfig())  # as the sampler keeps it
    hub, sim = make_hub(telemetry=buffer)
    clock = sim.clock
    for mhz in (1300.0, 1200.0, 1100.0, 1000.0, 900.0):  # one sample a second
        clock.advance(1.0)
        sample = sim.telemetry(BoardState(gpu_cur_mhz=mhz), mhz)
        buffer.append(sample)
        hub.on_telemetry(sample)
    rec = sim.one(BoardState())  # advances the clock by 4 s
    result = result_for(rec)
    result.synthesis_seconds = 12.0  # its middle was 6 s ago: the 1100 MHz sample
    hub.on_synthesis(result, request_id="r")
    assert hub.monitor.status()["window"]["n"] == 1
    assert buffer.nearest(clock() - 6.0).gpu_cur_mhz == 1100.0
    assert buffer.nearest(clock() - 60.0) is None  # too old to describe that moment
    last = hub.status()["last_record"]
    assert (last["request_id"], last["gpu_cur_mhz"], last["jetson_clocks"]) == ("r", 1100.0, True)


def test_format_status_for_the_cli_names_alerts_history_and_remediation():
    hub, sim = make_hub(apply_fn=lambda: {"ok": True}, background_remediation=False)
    feed(hub, sim, BoardState(), 5)
    assert "learning baseline 5/30" in render_monitor(hub.status())[0]
    feed(hub, sim, BoardState(), 55)
    feed(hub, sim, BoardState(gpu_cur_mhz=800.0), 20)
    during = render_monitor(json.loads(json.dumps(hub.status())))  # works on the JSON the CLI receives
    assert during[1] == "Active alerts:"
    assert during[2].startswith("  ERROR clock_drift: synthesis +") and "(id rtf-1, since 20" in during[2]
    feed(hub, sim, BoardState(), 40)
    after = render_monitor(hub.status())
    assert "Active alerts: none" in after
    history = [l for l in after if " rtf-1 " in l]
    assert len(history) == 2 and "raised " in history[0] and "cleared rtf-1 error clock_drift after" in history[1]
    assert after[-1].startswith("Remediation: idle, attempts 1, recovered 1") and "last: recovered (rtf-1)" in after[-1]
    assert render_monitor(MonitorHub(MonitorConfig(enabled=False)).status()) == ["RTF monitor: off"]
