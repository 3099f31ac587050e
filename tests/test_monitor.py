"""The RTF detector replayed on seeded sequences from a model of the board (tests/monitor_sim.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from ishowtts_edge.config import MonitorConfig, Settings
from ishowtts_edge.monitor.baseline import Baseline
from ishowtts_edge.monitor.detector import RtfMonitor
from ishowtts_edge.monitor.records import SynthesisRecord
from monitor_sim import A_S, B_S, LOCKED_MHZ, BoardState, FakeClock, Phase, Simulator, warmup_points

SEEDS = [1, 2, 3]


def make(cfg: MonitorConfig | None = None, seed: int = 1):
    clock = FakeClock()
    sim = Simulator(seed, clock)
    monitor = RtfMonitor(cfg or MonitorConfig(), clock=clock, wall_clock=sim.wall)
    return monitor, sim


def replay(monitor: RtfMonitor, sim: Simulator, phases: list[Phase], observe: bool = True):
    """Run the phases; return every alert event as (request number, phase index, event)."""
    events = []
    for phase_index, rec in sim.run(phases):
        if observe and rec.telemetry is not None:
            events += [(sim.n, phase_index, e) for e in monitor.observe_telemetry(rec.telemetry)]
        events += [(sim.n, phase_index, e) for e in monitor.record(rec)]
    return events


def rtf_events(events):
    return [(n, p, e) for n, p, e in events if e.alert.kind == "rtf"]


def actions(events):
    return [e.action for _, _, e in events]


# ---------------------------------------------------------------- healthy boards


@pytest.mark.parametrize("seed", SEEDS)
def test_stable_locked_board_never_alerts(seed):
    monitor, sim = make(seed=seed)
    events = replay(monitor, sim, [Phase(400)])
    assert events == []
    assert monitor.baseline is not None and monitor.baseline.source == "learned"
    stats = monitor.window_stats()
    assert abs(stats["ratio"]["median"] - 1.0) < 0.02
    assert stats["ratio"]["cv"] < 0.03


@pytest.mark.parametrize("seed", SEEDS)
def test_noisy_but_healthy_with_pauses_and_slow_first_calls_does_not_alert(seed):
    monitor, sim = make(seed=seed)
    monitor.calibrate(warmup_points(scale=2.5))  # warm-up skewed by first-call costs
    # Jitter well above the lineage's +-1.5 % locked figure, plus 1.5x pauses.
    noisy = BoardState(noise=0.025, outlier_p=0.04)
    first_calls = BoardState(noise=0.025, load=3.0)
    events = replay(monitor, sim, [Phase(2, first_calls), Phase(500, noisy)])
    assert events == []
    # The learned baseline replaced the skewed warm-up one and sits near the true model.
    assert monitor.baseline.source == "learned"
    assert abs(monitor.window_stats()["ratio"]["median"] - 1.0) < 0.05


def test_learning_is_robust_to_first_calls_without_warmup():
    monitor, sim = make(seed=7)
    events = replay(monitor, sim, [Phase(3, BoardState(load=4.0)), Phase(200)])
    assert events == []
    b = monitor.baseline
    assert b.source == "learned"
    # Expected time for a typical request within 5 % of the true model (0.12 + 2.857e-4 * 500 * 7).
    assert b.expected(500, 7) == pytest.approx(0.12 + 2.857e-4 * 3500, rel=0.05)


# ---------------------------------------------------------------- hardware faults


@pytest.mark.parametrize("seed", SEEDS)
def test_sudden_clock_drop_alerts_fast_as_clock_drift_then_clears_once(seed):
    monitor, sim = make(seed=seed)
    dropped = BoardState(gpu_cur_mhz=800.0)
    events = rtf_events(replay(monitor, sim, [Phase(100), Phase(60, dropped), Phase(300)]))
    assert actions(events) == ["raised", "cleared"]
    n_raised, phase, raised = events[0]
    # The recent median moves after 5 slow requests of 8, then raise_after=3 confirms it.
    assert phase == 1 and n_raised <= 100 + 8
    assert raised.alert.cause == "clock_drift"
    assert raised.alert.severity == "error"  # 1300/800 = +63 %
    assert raised.alert.figures["gpu_cur_mhz"] == 800.0
    assert raised.alert.figures["gpu_max_mhz"] == LOCKED_MHZ
    assert raised.alert.figures["slowdown"] > 0.4
    n_cleared, phase, cleared = events[1]
    assert phase == 2 and n_cleared <= 160 + 8 + 5 + 2  # recent window refilled + clear_after
    assert cleared.alert.id == raised.alert.id and cleared.alert.cleared is not None
    assert monitor.active_alerts() == []


@pytest.mark.parametrize("seed", SEEDS)
def test_slow_clock_drift_raises_warning_as_clock_drift(seed):
    monitor, sim = make(seed=seed)
    events = rtf_events(replay(monitor, sim, [Phase(100), Phase(200, ramp_to_mhz=1000.0)]))
    assert actions(events)[0] == "raised"
    n, phase, raised = events[0]
    assert phase == 1
    assert raised.alert.cause == "clock_drift"
    # Not before the clock fell enough to slow things past the threshold (~1130 MHz).
    clock_at_raise = raised.alert.figures["gpu_cur_mhz"]
    assert clock_at_raise < LOCKED_MHZ / 1.12
    assert raised.alert.severity == "warning"
    # 1300/1000 = +30 %: stays a warning, stays raised, no flapping.
    assert actions(events) == ["raised"]


@pytest.mark.parametrize("seed", SEEDS)
def test_thermal_throttle_is_attributed(seed):
    monitor, sim = make(seed=seed)
    hot = BoardState(gpu_cur_mhz=950.0, temp_c=97.0)
    events = rtf_events(replay(monitor, sim, [Phase(80), Phase(40, hot)]))
    assert actions(events) == ["raised"]
    alert = events[0][2].alert
    assert alert.cause == "thermal_throttle"
    assert alert.figures["temp_c"] == 97.0 and alert.figures["hottest_zone"] == "tj"
    assert "tj 97 C" in alert.summary()


def test_heat_is_judged_by_the_telemetry_sections_hot_threshold():
    """One figure says "hot" for the sampler's throttle tags and the monitor's causes."""
    settings = Settings(telemetry={"hot_tj_c": 70.0})
    warm = BoardState(gpu_cur_mhz=950.0, temp_c=75.0)
    for hot_c, cause in ((None, "clock_drift"), (settings.telemetry.hot_tj_c, "thermal_throttle")):
        clock = FakeClock()
        sim = Simulator(3, clock)
        monitor = RtfMonitor(MonitorConfig(), clock=clock, wall_clock=sim.wall, hot_c=hot_c)
        events = rtf_events(replay(monitor, sim, [Phase(80), Phase(40, warm)]))
        assert events[0][2].alert.cause == cause


def test_throttle_flag_without_heat_is_thermal_throttle_too():
    monitor, sim = make(seed=4)
    oc = BoardState(gpu_cur_mhz=900.0, throttle=("oc3",))
    events = rtf_events(replay(monitor, sim, [Phase(80), Phase(30, oc)]))
    assert events[0][2].alert.cause == "thermal_throttle"
    assert events[0][2].alert.figures["throttle"] == "oc3"


def test_clock_below_locked_minimum_without_heat_is_clock_drift():
    """Telemetry tags a GPU under its locked minimum "gpu_below_min"; that is the low clock
    itself, not a cause, so a cool board without oc events is drift (which remediation fixes)."""
    monitor, sim = make(seed=4)
    below = BoardState(gpu_cur_mhz=900.0, throttle=("gpu_below_min",))
    events = rtf_events(replay(monitor, sim, [Phase(80), Phase(30, below)]))
    assert events[0][2].alert.cause == "clock_drift"


@pytest.mark.parametrize("seed", SEEDS)
def test_clocks_off_gives_noisy_slow_window_attributed_to_clocks_off(seed):
    monitor, sim = make(seed=seed)
    off = BoardState(jetson_clocks=False, unlocked_jitter=True, noise=0.03)
    events = replay(monitor, sim, [Phase(80), Phase(60, off)])
    rtf = rtf_events(events)
    assert rtf[0][2].action == "raised" and rtf[0][2].alert.cause == "clocks_off"
    # +67 % on average: an error, reached at once or by one escalation, never flapping.
    assert [e.action for _, _, e in rtf] in (["raised"], ["raised", "updated"])
    assert rtf[-1][2].alert.severity == "error"
    assert {e.alert.id for _, _, e in rtf} == {rtf[0][2].alert.id}
    # Seen directly in telemetry as well, after telemetry_confirm samples.
    direct = [e for _, _, e in events if e.alert.kind == "telemetry"]
    assert [(e.action, e.alert.cause, e.alert.severity) for e in direct] == [("raised", "clocks_off", "warning")]


def test_power_mode_change_is_attributed():
    monitor, sim = make(seed=5)
    low = BoardState(nvpmodel_id=1, nvpmodel_name="MODE_50W", gpu_max_mhz=816.0, gpu_cur_mhz=816.0)
    events = replay(monitor, sim, [Phase(80), Phase(30, low)])
    rtf = rtf_events(events)
    assert rtf[0][2].alert.cause == "power_mode_changed"
    assert rtf[0][2].alert.figures["nvpmodel"] == "MODE_50W"
    assert rtf[0][2].alert.figures["expected_nvpmodel"] == "MAXN"
    assert "expected MAXN" in rtf[0][2].alert.summary()


def test_slowdown_with_healthy_clocks_is_unknown():
    monitor, sim = make(seed=6)
    events = rtf_events(replay(monitor, sim, [Phase(80), Phase(30, BoardState(load=1.35))]))
    assert actions(events) == ["raised"]
    assert events[0][2].alert.cause == "unknown"


def test_no_telemetry_at_all_still_detects_and_says_unknown():
    monitor, sim = make(seed=8)
    blind = BoardState(telemetry=False)
    events = rtf_events(replay(monitor, sim, [Phase(60, blind), Phase(30, BoardState(telemetry=False, load=1.6))]))
    assert actions(events) == ["raised"]
    assert events[0][2].alert.cause == "unknown"
    assert events[0][2].alert.figures.get("gpu_cur_mhz") is None


# ---------------------------------------------------------------- hysteresis


def test_between_clear_and_raise_thresholds_the_alert_holds_without_flapping():
    monitor, sim = make(seed=9)
    phases = [
        Phase(80),
        Phase(30, BoardState(load=1.25)),  # raise (> +15 %)
        Phase(150, BoardState(load=1.12)),  # below raise, above clear (+9 %): must hold
        Phase(100),  # healthy: clears once
    ]
    events = rtf_events(replay(monitor, sim, phases))
    assert [(e.action, p) for _, p, e in events] == [("raised", 1), ("cleared", 3)]


@pytest.mark.parametrize("managed", [True, False], ids=["clocks-managed", "clocks-not-managed"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_recovered_board_clears_within_recent_count_plus_clear_after_in_either_mode(seed, managed):
    """Without clock management the alert is raised by the window median alone; it must clear on the
    same evidence (the recent median), not wait for the window median or a jitter it never judged."""
    clock = FakeClock()
    sim = Simulator(seed, clock)
    cfg = MonitorConfig()
    monitor = RtfMonitor(cfg, clock=clock, wall_clock=sim.wall, expect_clocks_locked=managed)
    # Locked Jetson clocks (+-1.5 % noise), or a desktop GPU or CPU that nothing locks (+-3 %).
    steady = BoardState() if managed else BoardState(jetson_clocks=None, noise=0.03)
    assert replay(monitor, sim, [Phase(100, steady)]) == []
    raised = []
    for _, rec in sim.run([Phase(80, replace(steady, load=2.0))]):
        raised = monitor.record(rec)
        if raised:
            break
    assert [e.action for e in raised] == ["raised"]
    for healthy in range(1, 101):
        events = monitor.record(sim.one(steady))
        if events:
            break
    assert [e.action for e in events] == ["cleared"]
    assert healthy <= cfg.recent_count + cfg.clear_after


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_without_clock_management_jitter_does_not_make_a_modest_slowdown_an_error(seed):
    """Clocks left to the governor jitter by design; that jitter neither raises an alert nor
    escalates one: a +35 % slowdown is a warning, as it would be on a steady board."""
    clock = FakeClock()
    sim = Simulator(seed, clock)
    cfg = MonitorConfig()
    monitor = RtfMonitor(cfg, clock=clock, wall_clock=sim.wall, expect_clocks_locked=False)
    floating = BoardState(jetson_clocks=None, noise=0.2)
    assert replay(monitor, sim, [Phase(100, floating)]) == []
    events = rtf_events(replay(monitor, sim, [Phase(150, replace(floating, load=1.36))]))
    assert [(e.action, e.alert.severity) for _, _, e in events][:1] == [("raised", "warning")]


def test_severity_escalates_once_and_never_downgrades_while_active():
    monitor, sim = make(seed=10)
    phases = [Phase(80), Phase(30, BoardState(load=1.25)), Phase(30, BoardState(load=1.8)),
              Phase(30, BoardState(load=1.25))]
    events = rtf_events(replay(monitor, sim, phases))
    assert [(e.action, e.alert.severity) for _, _, e in events] == [("raised", "warning"), ("updated", "error")]


def test_cause_update_is_reported_when_telemetry_explains_a_slowdown():
    monitor, sim = make(seed=11)
    phases = [Phase(80), Phase(20, BoardState(load=1.5)), Phase(20, BoardState(gpu_cur_mhz=860.0))]
    events = rtf_events(replay(monitor, sim, phases))
    assert [(e.action, e.alert.cause) for _, _, e in events][:2] == [("raised", "unknown"), ("updated", "clock_drift")]
    assert events[0][2].alert.id == events[1][2].alert.id


# ---------------------------------------------------------------- baseline


def test_baseline_learned_only_from_locked_requests():
    cfg = MonitorConfig(baseline_samples=20)
    monitor, sim = make(cfg, seed=12)
    off = BoardState(jetson_clocks=False, unlocked_jitter=True)
    replay(monitor, sim, [Phase(40, off)], observe=False)
    assert monitor.baseline is None
    assert monitor.status()["learning"] == {"have": 0, "need": 20}
    replay(monitor, sim, [Phase(20)], observe=False)
    assert monitor.baseline.source == "learned"
    assert monitor.baseline.expected(500, 7) == pytest.approx(0.12 + 2.857e-4 * 3500, rel=0.05)


def test_reset_baseline_relearns_after_a_model_change_without_alerting():
    monitor, sim = make(seed=14)
    replay(monitor, sim, [Phase(60)])
    old = monitor.baseline
    monitor.reset_baseline()
    assert monitor.baseline is None and monitor.window_stats()["n"] == 0
    events = replay(monitor, sim, [Phase(100, BoardState(load=1.8))])  # a heavier model
    assert events == []
    assert monitor.baseline.source == "learned"
    assert monitor.baseline.expected(500, 7) == pytest.approx(1.8 * old.expected(500, 7), rel=0.05)


def test_unmanaged_clocks_learn_from_governor_clocks_and_alert_only_on_slowdown():
    clock = FakeClock()
    sim = Simulator(15, clock)
    monitor = RtfMonitor(MonitorConfig(), clock=clock, wall_clock=sim.wall, expect_clocks_locked=False)
    governor = BoardState(jetson_clocks=False, unlocked_jitter=True)
    # Floating clocks are this board's normal: jitter alone must not alert...
    assert replay(monitor, sim, [Phase(300, governor)]) == []
    assert monitor.baseline is not None and monitor.baseline.source == "learned"
    # ...but getting much slower than that normal still does.
    slower = BoardState(jetson_clocks=False, unlocked_jitter=True, load=1.6)
    events = rtf_events(replay(monitor, sim, [Phase(60, slower)]))  # the window median needs half the window
    assert events and events[0][2].action == "raised"


def test_calibration_gives_a_baseline_before_any_request_and_learning_replaces_it():
    monitor, sim = make(seed=13)
    b = monitor.calibrate(warmup_points())
    assert b.source == "warmup"
    assert b.intercept_s == pytest.approx(0.12, rel=0.01)
    assert b.seconds_per_unit == pytest.approx(2.857e-4, rel=0.01)
    # A fault during learning is caught with the warm-up baseline already.
    events = rtf_events(replay(monitor, sim, [Phase(10), Phase(10, BoardState(gpu_cur_mhz=700.0))]))
    assert events and events[0][2].alert.cause == "clock_drift"
    assert monitor.baseline.source == "warmup"  # nothing learned while an alert is active


def test_learned_on_one_size_then_a_new_size_is_learned_not_alerted():
    """An app that sent only sentences, then short lines: a baseline fit on one size is proportional,
    and called every short line ~60 % slow (an ERROR alert in the sixth session's H200 bench)."""
    monitor, sim = make(seed=5)
    sentence, short = (880, 7, 1), (90, 7, 1)
    events = replay(monitor, sim, [Phase(40, sizes=sentence)])
    assert events == [] and monitor.baseline.narrow and not monitor.baseline.covers(90, 7)
    events = replay(monitor, sim, [Phase(60, sizes=short)])
    assert rtf_events(events) == []
    b = monitor.baseline
    assert b.source == "learned" and not b.narrow and b.covers(90, 7)
    assert b.intercept_s == pytest.approx(A_S, rel=0.15)  # the fixed cost per chunk, now known
    assert b.expected(90, 7) == pytest.approx(A_S + B_S * 90 * 7, rel=0.05)
    assert monitor.status()["baseline"]["narrow"] is False
    # The widened baseline still catches a real slowdown on the short lines.
    events = rtf_events(replay(monitor, sim, [Phase(30, BoardState(gpu_cur_mhz=700.0), sizes=short)]))
    assert events and events[0][2].action == "raised" and events[0][2].alert.cause == "clock_drift"


def test_learned_at_one_step_count_another_is_judged_once_seen():
    """Learned at NFE 7 only, then short texts at NFE 32: a per-step cost folded into the fixed cost
    made them look 30 % slow (a WARNING in the sixth session's H200 bench)."""

    board = BoardState(step_s=0.01)
    monitor, sim = make(seed=8)
    events = replay(monitor, sim, [Phase(10, board, sizes=(f, 7, 1)) for f in (90, 400, 900)])
    b = monitor.baseline
    assert b.nfe_values == (7,) and not b.per_step and not b.covers(90, 32) and b.covers(90, 7)
    events += replay(monitor, sim, [Phase(40, board, sizes=(90, 32, 1))])
    assert rtf_events(events) == []
    b = monitor.baseline
    assert b.per_step and b.covers(90, 32) and b.covers(400, 16)
    assert b.step_s == pytest.approx(0.01, rel=0.3)
    for frames, nfe in ((90, 32), (900, 7), (400, 16)):
        assert b.expected(frames, nfe) == pytest.approx(A_S + nfe * 0.01 + B_S * frames * nfe, rel=0.05)
    # A real slowdown at the new step count is still caught.
    slow = replace(board, gpu_cur_mhz=700.0)
    events = rtf_events(replay(monitor, sim, [Phase(30, slow, sizes=(90, 32, 1))]))
    assert events and events[0][2].action == "raised" and events[0][2].alert.cause == "clock_drift"


def test_a_narrow_baseline_learns_nothing_from_a_new_size_on_a_throttled_board():
    """Requests of a new size seen while the board throttles do not teach the baseline."""
    monitor, sim = make(seed=6)
    replay(monitor, sim, [Phase(40, sizes=(880, 7, 1))])
    hot = BoardState(temp_c=95.0, throttle=("thermal",), gpu_cur_mhz=900.0)
    replay(monitor, sim, [Phase(20, hot, sizes=(90, 7, 1))])
    assert monitor.baseline.narrow  # still the sentence-only fit
    assert monitor.baseline.n == 30


def test_baseline_fit_falls_back_to_proportional_for_one_size():
    b = Baseline.fit([(500, 7, 1.12), (500, 7, 1.13), (501, 7, 1.11)], source="learned")
    assert b.intercept_s == 0.0 and b.narrow and b.nfe_values == (7,)
    assert b.expected(500, 7) == pytest.approx(1.12, rel=0.02)
    assert b.covers(500, 7) and not b.covers(100, 7) and not b.covers(500, 32)


@pytest.mark.parametrize(
    "points, message",
    [
        ([], "at least 2"),
        ([(100, 7)], "expected (mel_frames, nfe, seconds"),
        ([(100, 7, -1.0), (200, 7, float("nan"))], "at least 2"),
        ([(100, 7, 1.0, 0)], "chunks must be >= 1"),
    ],
)
def test_calibrate_rejects_bad_points_and_keeps_nothing(points, message):
    monitor, _ = make()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        monitor.calibrate(points)
    assert monitor.baseline is None


# ---------------------------------------------------------------- telemetry seen directly


def _sample(sim: Simulator, **changes):
    state = BoardState(**changes)
    sim.clock.advance(1.0)
    return sim.telemetry(state, state.gpu_cur_mhz)


def test_clocks_off_seen_directly_is_confirmed_and_cleared_with_hysteresis():
    monitor, sim = make(MonitorConfig(telemetry_confirm=3))
    seq = [True, False, False, True, False, False, False, False, True, True, None, True]
    got = []
    for i, on in enumerate(seq):
        for e in monitor.observe_telemetry(_sample(sim, jetson_clocks=on)):
            got.append((i, e.action, e.alert.cause))
    # A 2-sample glitch does not alert; 3 in a row do; None (unknown) does not count either way.
    assert got == [(6, "raised", "clocks_off"), (11, "cleared", "clocks_off")]


def test_power_mode_expected_from_daemon_overrides_first_seen():
    monitor, sim = make()
    monitor.expect_power_mode(0, "MAXN")
    got = []
    for _ in range(MonitorConfig().telemetry_confirm):
        got += monitor.observe_telemetry(_sample(sim, nvpmodel_id=2, nvpmodel_name="MODE_30W"))
    assert [(e.action, e.alert.cause) for e in got] == [("raised", "power_mode_changed")]
    assert got[0].alert.figures["nvpmodel"] == "MODE_30W"
    assert "expected MAXN" in got[0].alert.message


def test_clocks_off_not_alerted_when_daemon_does_not_manage_clocks():
    clock = FakeClock()
    sim = Simulator(1, clock)
    monitor = RtfMonitor(MonitorConfig(), clock=clock, wall_clock=sim.wall, expect_clocks_locked=False)
    events = []
    for _ in range(10):
        events += monitor.observe_telemetry(_sample(sim, jetson_clocks=False))
    assert events == []


# ---------------------------------------------------------------- window, inputs, status


def test_window_forgets_by_age_and_count():
    cfg = MonitorConfig(window_count=30, window_age_s=60.0)
    monitor, sim = make(cfg)
    replay(monitor, sim, [Phase(100)])
    assert monitor.window_stats()["n"] == 16  # 60 s / 4 s per request, both ends included
    sim.clock.advance(120.0)
    assert monitor.window_stats()["n"] == 0
    cfg2 = MonitorConfig(window_count=30, window_age_s=10_000.0)
    monitor2, sim2 = make(cfg2)
    replay(monitor2, sim2, [Phase(100)])
    assert monitor2.window_stats()["n"] == 30


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("audio_seconds", 0.0, "audio_seconds=0.0 must be > 0"),
        ("synthesis_seconds", float("nan"), "synthesis_seconds=nan is not a finite number"),
        ("mel_frames", 0, "mel_frames=0 must be an integer >= 1"),
        ("nfe_step", 2.5, "nfe_step=2.5 must be an integer >= 1"),
        ("model_frames", 0, "model_frames=0 must be an integer >= 1"),
    ],
)
def test_bad_record_is_rejected_and_window_untouched(field, value, message):
    monitor, sim = make()
    replay(monitor, sim, [Phase(30)])
    before = monitor.window_stats()
    rec = sim.one(BoardState())
    setattr(rec, field, value)
    with pytest.raises(ValueError, match=message):
        monitor.record(rec)
    assert monitor.window_stats() == before
    assert monitor.status()["records_rejected"] == 1


def test_status_is_json_and_reports_window_alerts_and_history():
    monitor, sim = make(seed=3)
    replay(monitor, sim, [Phase(100), Phase(30, BoardState(gpu_cur_mhz=800.0)), Phase(60)])
    status = monitor.status()
    text = json.dumps(status, allow_nan=False)  # strict JSON: no NaN/inf anywhere
    assert json.loads(text) == status
    w = status["window"]
    assert set(w["ratio"]) == {"n", "mean", "median", "p90", "cv", "robust_cv", "jitter"}
    assert set(w["rtf"]) == {"n", "mean", "median", "p90", "cv", "robust_cv", "jitter"}
    assert 0.15 < w["median_rtf"] < 0.35 and w["last_rtf"] > 0
    assert status["baseline"]["source"] == "learned"
    assert [h["action"] for h in status["history"]] == ["raised", "cleared"]
    assert status["active_alerts"] == []
    assert status["locked_gpu_max_mhz"] == LOCKED_MHZ
    assert status["expected_power_mode"] == {"id": 0, "name": "MAXN"}


def test_history_in_status_is_capped_at_twenty():
    cfg = MonitorConfig(telemetry_confirm=1)
    monitor, sim = make(cfg)
    for i in range(30):
        monitor.observe_telemetry(_sample(sim, jetson_clocks=bool(i % 2)))
    assert len(monitor.status()["history"]) == 20


def test_record_from_result_takes_engine_fields():
    import numpy as np

    from ishowtts_edge.engine import SynthesisResult

    result = SynthesisResult(audio=np.zeros(24000 * 2, dtype=np.float32), sample_rate=24000,
                             synthesis_seconds=0.5, mel_frames=188, nfe_step=7, chunks=1)
    rec = SynthesisRecord.from_result(result, request_id="abc", monotonic=5.0, wall=6.0)
    assert (rec.audio_seconds, rec.rtf, rec.mel_frames, rec.nfe_step) == (2.0, 0.25, 188, 7)
    assert rec.model_frames is None and rec.fit_point == (188, 7, 0.5)  # an engine that does not say
    with_model = SynthesisRecord.from_result(
        SynthesisResult(audio=result.audio, sample_rate=24000, synthesis_seconds=0.5, mel_frames=188,
                        nfe_step=7, chunks=1, model_frames=768), monotonic=5.0, wall=6.0)
    assert with_model.fit_point == (768, 7, 0.5) and with_model.to_dict()["model_frames"] == 768
    d = rec.to_dict()
    assert d["request_id"] == "abc" and d["rtf"] == 0.25 and d["gpu_cur_mhz"] is None
    assert math.isfinite(d["wall"])
