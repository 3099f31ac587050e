"""The detector: a rolling window of syntheses judged against the baseline, and the alerts it raises.

It owns the window, the thresholds and the raise/update/clear decisions (with their
hysteresis), for RTF alerts seen in timings and for clocks_off and power_mode_changed seen
directly in telemetry.  What is expected of the board, the baseline and the wording of
alerts live in their own modules; this one decides when.  Plain Python driven by explicit
clocks, so tests replay recorded sequences deterministically.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..config import MonitorConfig
from ..logs import kv
from ..telemetry import TelemetrySample
from .alerts import CLEAR_KEYS, Alert, AlertEvent, cause_detail, rtf_message
from .baseline import Baseline, BaselineLearner, baseline_fields, warmup_baseline
from .expectations import HardwareExpectations, telemetry_brief
from .records import SynthesisRecord
from .stats import finite, jsonable, median, stats

logger = logging.getLogger(__package__)

HISTORY_IN_STATUS = 20


@dataclass
class _TelemetryCondition:
    """Consecutive-sample counters for a condition seen directly in telemetry."""

    bad: int = 0
    good: int = 0


class RtfMonitor:
    """Rolling-window detector.  Thread-safe: the daemon records from the synthesis
    thread, observes telemetry from the sampler thread and reads status from the front end."""

    def __init__(
        self,
        cfg: MonitorConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        expect_clocks_locked: bool = True,
        hot_c: float | None = None,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self._wall = wall_clock
        self._hw = HardwareExpectations(cfg, expect_clocks_locked=expect_clocks_locked, hot_c=hot_c)
        self._lock = threading.RLock()
        self._window: deque[SynthesisRecord] = deque(maxlen=cfg.window_count)
        self._learner = BaselineLearner(cfg.baseline_samples)
        self._alerts: dict[str, Alert] = {}  # key: "rtf" or "telemetry:<cause>"
        self._history: deque[dict[str, Any]] = deque(maxlen=cfg.history_size)
        self._ids = itertools.count(1)
        self._healthy_streak = 0
        self._unhealthy_streak = 0
        self._last_telemetry: TelemetrySample | None = None
        self._conditions = {"clocks_off": _TelemetryCondition(), "power_mode_changed": _TelemetryCondition()}
        self._records_total = 0
        self._rejected_total = 0
        #: window_stats() as last computed; None once the window or the baseline changed.
        self._window_stats: dict[str, Any] | None = None

    # ---------------------------------------------------------------- inputs

    def calibrate(self, points: Iterable[Sequence[float]]) -> Baseline:
        """Set a provisional baseline from warm-up timings: (mel_frames, nfe, seconds[, chunks]).

        A learned baseline (from real requests) replaces it once enough are seen.
        Raises ValueError when the points cannot make a baseline.
        """
        baseline = warmup_baseline(points)
        with self._lock:
            self._learner.use_warmup(baseline)
            self._window_stats = None
        logger.info("RTF baseline from warm-up %s", kv(**baseline_fields(baseline)))
        return baseline

    def expect_power_mode(self, mode_id: int | None = None, mode_name: str | None = None) -> None:
        """Tell the monitor which power mode the daemon applied; otherwise the first one seen is expected."""
        with self._lock:
            self._hw.expected_mode = (mode_id, mode_name)

    def reset_baseline(self) -> None:
        """Forget the learned baseline (e.g. after a model or JetPack change) and learn it again."""
        with self._lock:
            self._learner.reset()
            self._window.clear()
            self._window_stats = None

    def record(self, rec: SynthesisRecord) -> list[AlertEvent]:
        """Add one synthesis; return the alert changes it caused.  Raises ValueError for a bad record."""
        try:
            rec.validate()
        except ValueError:
            with self._lock:
                self._rejected_total += 1
            raise
        with self._lock:
            self._records_total += 1
            self._window_stats = None  # the window, the learned baseline or both change below
            if rec.telemetry is not None:
                self._hw.learn(rec.telemetry)
            self._window.append(rec)
            if not self._learner.judges(rec):
                self._prune(rec.monotonic)
                self._widen(rec)  # a size or step count the baseline cannot judge: learn from it instead
                return []
            self._prune(rec.monotonic)
            self._maybe_learn(rec)
            if self._learner.baseline is None:
                return []
            return self._evaluate()

    def observe_telemetry(self, sample: TelemetrySample) -> list[AlertEvent]:
        """Watch clocks and power mode directly, so they alert even while no requests arrive."""
        with self._lock:
            self._last_telemetry = sample
            self._hw.learn(sample)
            events: list[AlertEvent] = []
            checks = {
                "clocks_off": self._hw.clocks_off(sample),
                "power_mode_changed": self._hw.mode_changed(sample),
            }
            for cause, bad in checks.items():
                if bad is None:  # the source could not tell: keep the counters as they are
                    continue
                cond = self._conditions[cause]
                key = f"telemetry:{cause}"
                if bad:
                    cond.bad, cond.good = cond.bad + 1, 0
                    if key not in self._alerts and cond.bad >= self.cfg.telemetry_confirm:
                        figures = self._hw.figures(sample)
                        events.append(self._raise(key, "telemetry", cause, "warning", figures))
                else:
                    cond.good, cond.bad = cond.good + 1, 0
                    if key in self._alerts and cond.good >= self.cfg.telemetry_confirm:
                        events.append(self._clear(key, self._hw.figures(sample)))
            return events

    # ---------------------------------------------------------------- outputs

    @property
    def baseline(self) -> Baseline | None:
        return self._learner.baseline

    @property
    def locked_gpu_max_mhz(self) -> float | None:
        return self._hw.locked_max_mhz

    @property
    def expect_clocks_locked(self) -> bool:
        """False while the daemon leaves clocks to the governor (see docs/monitoring.md)."""
        return self._hw.expect_clocks_locked

    @expect_clocks_locked.setter
    def expect_clocks_locked(self, value: bool) -> None:
        self._hw.expect_clocks_locked = value

    def active_alerts(self) -> list[Alert]:
        with self._lock:
            return [copy.deepcopy(a) for a in self._alerts.values()]

    def telemetry_healthy(self, sample: TelemetrySample) -> bool | None:
        """Clocks locked at their maximum in the expected power mode?  None when it cannot tell."""
        with self._lock:
            return self._hw.healthy(sample)

    def learning_progress(self) -> dict[str, int] | None:
        """Requests learned so far and needed; None once the baseline is learned."""
        with self._lock:
            return self._learner.progress()

    def window_stats(self) -> dict[str, Any]:
        """The window's statistics, computed again only after the window or the baseline changed:
        status, the STATUS= line, the state event and the metrics all ask for them."""
        with self._lock:
            self._prune(self._clock())
            if self._window_stats is None:
                recs = list(self._window)
                ratios = self._ratios(recs)
                self._window_stats = {
                    "n": len(recs),
                    "ratio": stats(ratios) if ratios else None,
                    "rtf": stats([r.rtf for r in recs]) if recs else None,
                    "last_rtf": finite(recs[-1].rtf) if recs else None,
                    "median_rtf": finite(median([r.rtf for r in recs])) if recs else None,
                }
            # a copy: callers own what they get, the cache stays as computed
            return {k: dict(v) if isinstance(v, dict) else v for k, v in self._window_stats.items()}

    def status(self) -> dict[str, Any]:
        """JSON-serialisable snapshot for ``ishowtts-edge status``."""
        with self._lock:
            baseline = self._learner.baseline
            window = self.window_stats()
            tele = self._last_telemetry
            return jsonable(
                {
                    "enabled": self.cfg.enabled,
                    "baseline": baseline.to_dict() if baseline else None,
                    "learning": self._learner.progress(),
                    "window": window,
                    "thresholds": {
                        "cv": self.cfg.cv_threshold,
                        "slowdown": self.cfg.slowdown_threshold,
                        "clock_drop": self.cfg.clock_drop_threshold,
                    },
                    "active_alerts": [a.to_dict() for a in self._alerts.values()],
                    "history": list(self._history)[-HISTORY_IN_STATUS:],
                    **self._hw.status(),
                    "last_telemetry": telemetry_brief(tele) if tele else None,
                    "last_record": self._window[-1].to_dict() if self._window else None,
                    "records_total": self._records_total,
                    "records_rejected": self._rejected_total,
                }
            )

    # ---------------------------------------------------------------- internals

    def _prune(self, now: float) -> None:
        horizon = now - self.cfg.window_age_s
        while self._window and self._window[0].monotonic < horizon:
            self._window.popleft()
            self._window_stats = None

    def _ratios(self, recs: Iterable[SynthesisRecord]) -> list[float]:
        baseline = self._learner.baseline
        if baseline is None:
            return []
        out = []
        for r in recs:
            if not self._learner.judges(r):
                continue
            expected = baseline.expected(r.work_frames, r.nfe_step, r.chunks)
            if expected > 0:
                out.append(r.synthesis_seconds / expected)
        return out

    def _clean_for_learning(self, rec: SynthesisRecord) -> bool:
        """Only requests on a healthy-looking board may teach the baseline."""
        # RTF alerts do not block learning: under a skewed warm-up baseline they may be the
        # baseline's fault, and each record's own telemetry already screens out bad hardware.
        if any(a.kind == "telemetry" for a in self._alerts.values()):
            return False
        tele = rec.telemetry
        if tele is None:
            return True  # no telemetry at all (dev machine, dead jtop): learn anyway, status says so
        return self._hw.fit_to_learn(tele)

    def _maybe_learn(self, rec: SynthesisRecord) -> None:
        if not self._learner.learned and self._clean_for_learning(rec):
            self._learner.learn(rec, self._window)

    def _widen(self, rec: SynthesisRecord) -> None:
        """Let the baseline learn a size or step count it cannot judge yet (BaselineLearner.widen)."""
        # Unlike the first learning, not during an RTF alert either: the learned baseline says
        # the board is slow then, and refitting would take the slowdown in as normal.
        if not self._alerts and self._clean_for_learning(rec):
            self._learner.widen(rec)

    def _attribute(self, recs: Sequence[SynthesisRecord]) -> str:
        """Most specific cause that at least half of the recent telemetry supports."""
        samples = [r.telemetry for r in recs if r.telemetry is not None]
        if self._last_telemetry is not None:
            samples.append(self._last_telemetry)
        return self._hw.attribute(samples)

    def _evaluate(self) -> list[AlertEvent]:
        recs = list(self._window)
        ratios = self._ratios(recs)
        if len(ratios) < self.cfg.min_samples:
            return []
        cfg = self.cfg
        whole = stats(ratios)
        recent_recs = recs[-cfg.recent_count :]
        recent = stats(ratios[-cfg.recent_count :])
        # Slowdown: the window median is steady, the recent median reacts to a sudden drop
        # (too noisy to trust when clocks float under the governor by design).
        if self.expect_clocks_locked:
            slowdown = max(whole["median"], recent["median"]) - 1.0
        else:
            slowdown = whole["median"] - 1.0
        # Spread: request-to-request jitter, which a level shift barely moves (that is
        # the slowdown's job) but floating clocks raise at once.
        spread = whole["jitter"]
        # A spread estimated from a handful of samples is itself too noisy to act on; under
        # the provisional warm-up baseline it mostly measures that baseline's error; and
        # with clocks deliberately left to the governor, jitter is the normal state.
        spread_trusted = (
            len(ratios) >= 2 * cfg.min_samples
            and self._learner.learned
            and self.expect_clocks_locked
        )
        slow_threshold = cfg.slowdown_threshold if self.expect_clocks_locked else cfg.unmanaged_slowdown_threshold
        active = self._alerts.get("rtf")
        figures = self._rtf_figures(recs, whole, recent, slowdown, recent_recs)
        # Severity weighs the same evidence: untrusted jitter neither raises nor escalates.
        judged_spread = spread if spread_trusted else 0.0

        if active is None:
            if slowdown > slow_threshold or (spread_trusted and spread > cfg.cv_threshold):
                self._unhealthy_streak += 1
                if self._unhealthy_streak >= cfg.raise_after:
                    self._unhealthy_streak = 0
                    cause = self._attribute(recent_recs)
                    severity = self._severity(slowdown, judged_spread)
                    return [self._raise("rtf", "rtf", cause, severity, figures)]
            else:
                self._unhealthy_streak = 0
            return []

        # Active: recovery is judged on the recent syntheses alone (the window still holds
        # the slow ones), against lower thresholds, for clear_after syntheses in a row.  It
        # weighs the evidence raising weighs: jitter only where it is trusted, so an alert
        # raised by the median with clocks left to the governor is not held by their jitter.
        recovered = (
            recent["median"] - 1.0 < slow_threshold * cfg.clear_ratio
            and (not spread_trusted or recent["jitter"] < cfg.cv_threshold * cfg.clear_ratio)
        )
        if recovered:
            self._healthy_streak += 1
            if self._healthy_streak >= cfg.clear_after:
                self._healthy_streak = 0
                # Restart the window from the healthy syntheses so old slow ones cannot re-raise.
                keep = min(len(self._window), cfg.recent_count)
                kept = list(self._window)[-keep:]
                self._window.clear()
                self._window.extend(kept)
                return [self._clear("rtf", figures)]
            return []
        self._healthy_streak = 0
        peak = max(slowdown, active.figures.get("peak_slowdown", slowdown))
        active.figures = dict(figures, peak_slowdown=peak)
        cause = self._attribute(recent_recs)
        if cause == "unknown":
            cause = active.cause  # telemetry going quiet (or clocks already back) explains nothing new
        severity = self._severity(slowdown, judged_spread)
        if severity == "warning" and active.severity == "error":
            severity = "error"  # never downgrade while active: avoids warning/error flapping
        if cause != active.cause or severity != active.severity:
            active.cause, active.severity = cause, severity
            active.message = rtf_message(cause, figures)
            return [AlertEvent("updated", copy.deepcopy(active), self._wall())]
        return []

    def _severity(self, slowdown: float, spread: float) -> str:
        if slowdown >= self.cfg.slowdown_error_threshold or spread >= self.cfg.cv_error_threshold:
            return "error"
        return "warning"

    def _rtf_figures(self, recs, whole, recent, slowdown, recent_recs) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "slowdown": slowdown,
            "jitter": whole["jitter"],
            "robust_cv": whole["robust_cv"],
            "cv": whole["cv"],
            "median_ratio": whole["median"],
            "recent_median_ratio": recent["median"],
            "p90_ratio": whole["p90"],
            "n": whole["n"],
            "median_rtf": median([r.rtf for r in recs]),
            "last_rtf": recs[-1].rtf,
        }
        tele = next((r.telemetry for r in reversed(recent_recs) if r.telemetry is not None), None)
        tele = self._last_telemetry or tele
        if tele is not None:
            figures.update(self._hw.figures(tele))
        return figures

    def _raise(self, key: str, kind: str, cause: str, severity: str, figures: dict[str, Any]) -> AlertEvent:
        if kind == "rtf":
            message = rtf_message(cause, figures)
            figures = dict(figures, peak_slowdown=figures["slowdown"])
        else:
            message = cause_detail(cause, figures).lstrip("; ") or cause
        alert = Alert(
            id=f"{kind}-{next(self._ids)}",
            kind=kind,
            cause=cause,
            severity=severity,
            started=self._wall(),
            started_monotonic=self._clock(),
            message=message,
            figures=figures,
        )
        self._alerts[key] = alert
        event = AlertEvent("raised", copy.deepcopy(alert), alert.started)
        self._history.append(event.to_dict())
        return event

    def _clear(self, key: str, figures: dict[str, Any]) -> AlertEvent:
        alert = self._alerts.pop(key)
        alert.cleared = self._wall()
        alert.figures = dict(alert.figures, **{f"cleared_{k}": v for k, v in figures.items() if k in CLEAR_KEYS})
        alert.figures["duration_s"] = self._clock() - alert.started_monotonic
        event = AlertEvent("cleared", copy.deepcopy(alert), alert.cleared)
        self._history.append(event.to_dict())
        if key.startswith("telemetry:"):
            self._conditions[key.split(":", 1)[1]] = _TelemetryCondition()
        return event
