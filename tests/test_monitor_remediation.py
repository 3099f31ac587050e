"""Remediator: when to ask the helper to re-apply clocks, how often, and how the outcome is judged."""

from __future__ import annotations

import logging
import threading

import pytest

from ishowtts_edge.config import MonitorConfig
from ishowtts_edge.monitor.alerts import Alert
from ishowtts_edge.monitor.remediation import Remediator
from monitor_sim import FakeClock


def alert(cause="clock_drift", id_=None) -> Alert:
    return Alert(id=id_ or f"{cause}-1", kind="rtf", cause=cause, severity="error", started=0.0,
                 started_monotonic=0.0, message="synthesis +60% vs baseline")


class Helper:
    """Stands in for HwctlClient.apply: records calls, answers as told."""

    def __init__(self, answers=None):
        self.calls = 0
        self.answers = list(answers or [])

    def __call__(self):
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else {"ok": True}
        if isinstance(answer, Exception):
            raise answer
        return answer


def make(helper, **cfg):
    clock = FakeClock()
    outcomes = []
    rem = Remediator(MonitorConfig(**cfg), helper, clock=clock, wall_clock=clock,
                     on_outcome=outcomes.append, background=False)
    return rem, clock, outcomes


def names(outcomes):
    return [o["outcome"] for o in outcomes]


@pytest.mark.parametrize("cause", ["clock_drift", "clocks_off", "power_mode_changed"])
def test_remediable_causes_apply_then_verify_then_recover(cause):
    helper = Helper()
    rem, clock, outcomes = make(helper)
    a = alert(cause)
    rem.poll([a])
    assert helper.calls == 1
    assert names(outcomes) == ["applying", "applied"]
    assert rem.state()["phase"] == "verifying"
    rem.on_telemetry(False)  # not yet
    rem.on_telemetry(True)
    rem.on_telemetry(True)  # reported once
    rem.on_cleared(a)
    assert names(outcomes) == ["applying", "applied", "clocks_restored", "recovered"]
    assert all(o["alert_id"] == a.id and o["cause"] == cause for o in outcomes)
    state = rem.state()
    assert (state["phase"], state["attempts"], state["recovered"]) == ("idle", 1, 1)


@pytest.mark.parametrize("cause", ["thermal_throttle", "unknown"])
def test_causes_that_reapplying_cannot_fix_are_left_alone(cause):
    helper = Helper()
    rem, _, outcomes = make(helper)
    rem.poll([alert(cause)])
    assert helper.calls == 0 and outcomes == []


def test_disabled_remediation_never_calls_the_helper():
    helper = Helper()
    rem, _, outcomes = make(helper, remediate=False)
    rem.poll([alert()])
    assert helper.calls == 0 and outcomes == []


def test_rate_limited_across_alerts_and_reported_once():
    helper = Helper()
    rem, clock, outcomes = make(helper, remediate_min_interval_s=120)
    first = alert(id_="clock_drift-1")
    rem.poll([first])
    rem.on_cleared(first)
    second = alert("clocks_off", id_="clocks_off-2")
    for _ in range(5):
        clock.advance(10)
        rem.poll([second])
    assert helper.calls == 1
    limited = [o for o in outcomes if o["outcome"] == "rate_limited"]
    assert len(limited) == 1 and limited[0]["alert_id"] == "clocks_off-2"
    assert limited[0]["retry_in_s"] == pytest.approx(110)
    clock.advance(80)  # 130 s after the first attempt
    rem.poll([second])
    assert helper.calls == 2


def test_helper_failure_is_reported_and_never_raised(caplog):
    helper = Helper([ConnectionRefusedError("helper socket refused"), {"ok": False, "error": "nvpmodel: NVPM ERROR"}])
    rem, clock, outcomes = make(helper, remediate_min_interval_s=60)
    a = alert()
    with caplog.at_level(logging.INFO, logger="ishowtts_edge.monitor"):
        rem.poll([a])
        clock.advance(61)
        rem.poll([a])
    failed = [o for o in outcomes if o["outcome"] == "apply_failed"]
    assert [f["detail"] for f in failed] == ["ConnectionRefusedError: helper socket refused", "nvpmodel: NVPM ERROR"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "outcome=apply_failed" in errors[0].getMessage()
    assert rem.state()["failed"] == 2 and rem.state()["phase"] == "idle"


def test_not_recovered_after_the_verify_deadline_then_retried_then_given_up():
    helper = Helper()
    rem, clock, outcomes = make(helper, remediate_min_interval_s=60, remediate_verify_s=100,
                                remediate_max_attempts=2)
    a = alert()
    rem.poll([a])
    clock.advance(50)
    rem.on_telemetry(True)
    clock.advance(60)
    rem.on_telemetry(True)  # past the deadline: alert still active
    assert names(outcomes)[-1] == "not_recovered"
    assert outcomes[-1]["clocks_restored"] is True  # clocks came back, RTF did not
    rem.poll([a])  # second attempt allowed (110 s > 60 s)
    clock.advance(101)
    rem.poll([a])
    clock.advance(100)
    rem.poll([a])
    rem.poll([a])
    assert helper.calls == 2
    assert names(outcomes).count("gave_up") == 1
    assert rem.state()["not_recovered"] == 2


def test_alert_cleared_while_helper_still_running_counts_as_recovered():
    release = threading.Event()
    started = threading.Event()

    def slow_apply():
        started.set()
        assert release.wait(10)
        return {"ok": True}

    clock = FakeClock()
    outcomes = []
    rem = Remediator(MonitorConfig(), slow_apply, clock=clock, wall_clock=clock, on_outcome=outcomes.append)
    a = alert()
    rem.poll([a])  # returns at once: the helper runs in its own thread
    assert started.wait(10)
    assert rem.state()["phase"] == "applying"
    rem.poll([a])  # no second attempt while one is in flight
    rem.on_cleared(a)
    release.set()
    assert rem.wait_idle(10)
    assert names(outcomes) == ["applying", "applied", "recovered"]
    assert rem.state()["phase"] == "idle"


def test_outcome_handler_failure_does_not_break_remediation(caplog):
    helper = Helper()

    def broken(_):
        raise RuntimeError("publisher gone")

    rem = Remediator(MonitorConfig(), helper, clock=FakeClock(), on_outcome=broken, background=False)
    with caplog.at_level(logging.ERROR, logger="ishowtts_edge.monitor"):
        rem.poll([alert()])
    assert helper.calls == 1 and rem.state()["phase"] == "verifying"
    assert "remediation outcome handler failed" in caplog.text
