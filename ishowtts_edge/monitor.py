"""RTF monitoring: tell hardware drift apart from request mix, alert, and attribute a cause.

Raw RTF mixes two things: short texts pay fixed costs (so their RTF is high) and a
slowed GPU makes everything slower.  Each synthesis is therefore compared with a
*baseline* that predicts its time from its size (``a + b * frames * nfe`` per chunk,
frames being what the transformer ran on: reference + generated, padded), and the
monitor watches ``measured / expected`` instead of RTF.  That ratio is ~1.0 on a healthy board whatever the texts are, so its spread and its median
move only when the hardware does.

The baseline is learned from the first ``baseline_samples`` real requests seen while
telemetry says clocks are locked (a provisional one can be given with
:meth:`RtfMonitor.calibrate`; the daemon does not, as its warm-up runs carry first-call
costs such as autotuning and graph capture, and real requests do not).  The fit is Theil-Sen
(medians of pairwise slopes), so a few odd first calls do not bend it.  Learned from
one request size, the baseline cannot know the fixed cost per chunk; it then judges
only sizes near the ones it saw and is refit once a few requests of a new size arrive
(:meth:`RtfMonitor._widen`), instead of calling every short text slow.

Everything here is plain Python, driven by explicit clocks, so tests replay recorded
sequences deterministically.  :class:`MonitorHub` fans the resulting events out to
the journal, an event publisher and the :class:`Remediator`; the daemon owns
threads and sockets.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

from .config import MonitorConfig
from .logs import kv
from .telemetry import TelemetrySample

if TYPE_CHECKING:
    from .engine import SynthesisResult

logger = logging.getLogger(__name__)

#: Causes in the order they are preferred when several apply: a changed power mode
#: explains clocks being off, clocks being off explains a low clock, and so on.
CAUSES = ("power_mode_changed", "clocks_off", "thermal_throttle", "clock_drift", "unknown")
#: Causes that re-applying the power mode and jetson_clocks can fix.
REMEDIABLE_CAUSES = frozenset({"clock_drift", "clocks_off", "power_mode_changed"})
SEVERITIES = ("warning", "error")
HISTORY_IN_STATUS = 20


# --------------------------------------------------------------------------- records


@dataclass
class SynthesisRecord:
    """One synthesis as the monitor sees it, with the telemetry sample nearest in time."""

    request_id: str
    monotonic: float  # time.monotonic() when the synthesis finished
    wall: float  # time.time() at the same moment
    audio_seconds: float
    synthesis_seconds: float
    mel_frames: int
    nfe_step: int
    chunks: int = 1
    telemetry: TelemetrySample | None = None
    #: Frames the transformer ran on (reference + generated, padded; engine's model_frames).
    #: The size the baseline uses when known: generated frames alone leave out the
    #: reference, whose cost also grows with the step count.
    model_frames: int | None = None

    @property
    def work_frames(self) -> int:
        return self.model_frames or self.mel_frames

    @classmethod
    def from_result(
        cls,
        result: "SynthesisResult",
        *,
        request_id: str = "",
        telemetry: TelemetrySample | None = None,
        monotonic: float | None = None,
        wall: float | None = None,
    ) -> "SynthesisRecord":
        return cls(
            request_id=request_id,
            monotonic=time.monotonic() if monotonic is None else monotonic,
            wall=time.time() if wall is None else wall,
            audio_seconds=float(result.audio_seconds),
            synthesis_seconds=float(result.synthesis_seconds),
            mel_frames=int(result.mel_frames),
            nfe_step=int(result.nfe_step),
            chunks=int(getattr(result, "chunks", 1) or 1),
            telemetry=telemetry,
            model_frames=getattr(result, "model_frames", None),
        )

    @property
    def rtf(self) -> float:
        return self.synthesis_seconds / self.audio_seconds

    @property
    def fit_point(self) -> tuple[float, int, float]:
        """(frames per chunk, nfe, seconds per chunk): what Baseline.fit takes."""
        return self.work_frames / self.chunks, self.nfe_step, self.synthesis_seconds / self.chunks

    def validate(self) -> None:
        """Raise ValueError naming the bad field: one broken record must not poison the window."""
        for name in ("audio_seconds", "synthesis_seconds", "monotonic", "wall"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"synthesis record {self.request_id!r}: {name}={value!r} is not a finite number")
        if self.audio_seconds <= 0:
            raise ValueError(f"synthesis record {self.request_id!r}: audio_seconds={self.audio_seconds} must be > 0")
        if self.synthesis_seconds <= 0:
            raise ValueError(
                f"synthesis record {self.request_id!r}: synthesis_seconds={self.synthesis_seconds} must be > 0"
            )
        for name in ("mel_frames", "nfe_step", "chunks", "model_frames"):
            value = getattr(self, name)
            if name == "model_frames" and value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"synthesis record {self.request_id!r}: {name}={value!r} must be an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        tele = self.telemetry
        hottest = tele.hottest if tele else None
        return {
            "request_id": self.request_id,
            "wall": self.wall,
            "audio_seconds": _finite(self.audio_seconds),
            "synthesis_seconds": _finite(self.synthesis_seconds),
            "rtf": _finite(self.rtf),
            "mel_frames": self.mel_frames,
            "model_frames": self.model_frames,
            "nfe_step": self.nfe_step,
            "chunks": self.chunks,
            "gpu_cur_mhz": tele.gpu_cur_mhz if tele else None,
            "gpu_max_mhz": tele.gpu_max_mhz if tele else None,
            "hottest": {"zone": hottest[0], "c": hottest[1]} if hottest else None,
            "jetson_clocks": tele.jetson_clocks if tele else None,
            "nvpmodel": tele.nvpmodel_name if tele else None,
        }


# --------------------------------------------------------------------------- baseline


#: A baseline fit on sizes spanning less than this ratio cannot tell its intercept from its
#: slope; it then only judges requests within this factor of the sizes it saw.
NARROW_SPREAD = 1.3
#: Clean requests of an unseen size a narrow baseline collects before it is refit with them.
WIDEN_SAMPLES = 5
#: The most points a baseline keeps for refits (the most recent).
MAX_FIT_POINTS = 200
#: Points a step count needs before the baseline judges requests at it.
MIN_GROUP_POINTS = 5
#: Step counts this far apart (largest / smallest) let the fit measure the per-step cost.
NFE_SPREAD = 2.0


@dataclass(frozen=True)
class Baseline:
    """Expected synthesis time per chunk: ``intercept_s + nfe * (step_s + seconds_per_unit * frames)``.

    ``intercept_s`` is what a chunk costs once (vocoder, host work), ``step_s`` what every
    sampling step costs whatever its length (kernel launches, small GEMMs below peak),
    ``seconds_per_unit`` what a frame costs per step.
    """

    intercept_s: float
    seconds_per_unit: float
    source: str  # "warmup" | "learned"
    n: int
    #: Work per chunk (frames * nfe) of the smallest and largest points it was fit on.
    work_lo: float = 0.0
    work_hi: float = math.inf
    step_s: float = 0.0
    #: The step counts it has enough points at to judge; () = not recorded (judges any).
    nfe_values: tuple[int, ...] = ()
    #: False when no step count's sizes spread enough to tell the fixed cost from the
    #: per-frame one: the model is then proportional.
    sized: bool = True
    #: True when step_s was measured (step counts far enough apart): every step count is judged.
    per_step: bool = False

    @property
    def narrow(self) -> bool:
        """Fit on (nearly) one size: proportional, so its fixed cost per chunk is unknown."""
        return not self.sized or self.work_hi < self.work_lo * NARROW_SPREAD

    def covers(self, frames_per_chunk: float, nfe_step: int) -> bool:
        """Whether it can judge a request of this size and step count.

        Fit on one step count, the per-step cost is folded into the intercept: only that
        step count is judged.  A narrow fit judges only sizes near its own.
        """
        if self.nfe_values and not self.per_step and nfe_step not in self.nfe_values:
            return False
        if not self.narrow:
            return True
        work = frames_per_chunk * nfe_step
        return self.work_lo / NARROW_SPREAD <= work <= self.work_hi * NARROW_SPREAD

    def expected(self, mel_frames: int, nfe_step: int, chunks: int = 1) -> float:
        chunks = max(1, chunks)
        return chunks * (self.intercept_s + nfe_step * self.step_s) + self.seconds_per_unit * mel_frames * nfe_step

    def to_dict(self) -> dict[str, Any]:
        return {
            "intercept_s": self.intercept_s,
            "step_s": self.step_s,
            "seconds_per_unit": self.seconds_per_unit,
            "source": self.source,
            "n": self.n,
            "work_range": [_finite(self.work_lo), _finite(self.work_hi)],
            "nfe_values": list(self.nfe_values),
            "per_step": self.per_step,
            "narrow": self.narrow,
        }

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float, float]], *, source: str) -> "Baseline":
        """Robust fit of (frames per chunk, nfe, seconds per chunk) points.

        The core is Theil-Sen in the per-unit form ``y/x = b + a/x`` (x = frames * nfe):
        errors there are relative, which is what the monitor judges, so short requests
        (where the intercept matters) weigh as much as long ones.  Step counts with at
        least MIN_GROUP_POINTS points are the ones judged.  When they lie NFE_SPREAD apart,
        each gets its own intercept and a line through those splits the once-per-chunk from
        the per-step cost (``per_step``).  Otherwise one fit over every point gives a single
        fixed cost (the per-step one folded in).  With no spread of sizes at all the model
        becomes proportional (intercept 0) and judges only sizes near its own.
        """
        pts = [(float(f), int(n), float(y)) for f, n, y in points
               if f > 0 and n >= 1 and y > 0 and math.isfinite(f) and math.isfinite(y)]
        if len(pts) < 2:
            raise ValueError(f"baseline needs at least 2 valid (frames, nfe, seconds) points, got {len(pts)}")
        works = [f * n for f, n, _ in pts]
        lo, hi = min(works), max(works)
        groups: dict[int, list[tuple[float, float]]] = {}
        for f, n, y in pts:
            groups.setdefault(n, []).append((f * n, y))
        # Step counts with too few points say too little about their own fixed cost.
        usable = {n: g for n, g in groups.items() if len(g) >= MIN_GROUP_POINTS}
        if not usable:
            n_most = max(groups, key=lambda n: len(groups[n]))
            usable = {n_most: groups[n_most]}
        nfe_values = tuple(sorted(usable))
        if len(usable) >= 2 and max(usable) / min(usable) >= NFE_SPREAD:
            # Per step count: its own fit's intercept where its sizes spread (the relative-
            # error form suits short requests), else what is left after the shared per-frame
            # cost; a line through those intercepts splits off the per-step cost.
            fits = {n: f for n, f in ((n, _fit_one_step_count(g)) for n, g in usable.items()) if f}
            if fits:
                slope = _median([b for _, b in fits.values()])
                fixed = {n: fits[n][0] if n in fits else max(0.0, _median([y - slope * x for x, y in g]))
                         for n, g in usable.items()}
                pairs = [(n1, n2) for n1, n2 in itertools.combinations(sorted(fixed), 2) if n2 / n1 >= 1.5]
                step = _median([(fixed[n2] - fixed[n1]) / (n2 - n1) for n1, n2 in pairs])
                intercept = _median([fixed[n] - step * n for n in fixed])
                if step >= 0 and intercept >= 0:
                    return cls(intercept, slope, source, len(pts), lo, hi, step, nfe_values, per_step=True)
        # One fixed cost: the two-parameter fit over every point (a few at other step counts
        # do not bend it), judging only the step counts with enough points.
        fitted = _fit_one_step_count([(f * n, y) for f, n, y in pts])
        if fitted is not None:
            return cls(fitted[0], fitted[1], source, len(pts), lo, hi, 0.0, nfe_values)
        # Proportional, from the step count seen most: one factor cannot serve step counts
        # whose fixed costs differ, so the others stay unjudged until sizes spread.
        n_most = max(usable, key=lambda n: len(usable[n]))
        group = usable[n_most]
        xs = [x for x, _ in group]
        slope = _median([y / x for x, y in group])
        return cls(0.0, slope, source, len(pts), min(xs), max(xs), 0.0, (n_most,), sized=False)


def _fit_one_step_count(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, per-unit cost) of (work, seconds) points at one step count; None without spread."""
    xs = [x for x, _ in points]
    if max(xs) / min(xs) < NARROW_SPREAD:
        return None
    per_unit = [(1.0 / x, y / x) for x, y in points]
    slopes = [
        (z2 - z1) / (u2 - u1)
        for (u1, z1), (u2, z2) in itertools.combinations(per_unit, 2)
        if abs(u2 - u1) > 0.02 * min(u1, u2)
    ]
    if not slopes:
        return None
    intercept = _median(slopes)
    slope = _median([z - intercept * u for u, z in per_unit])
    return (intercept, slope) if slope > 0 and intercept >= 0 else None


# --------------------------------------------------------------------------- alerts


@dataclass
class Alert:
    """An active or past alert.  ``kind`` is "rtf" (seen in timings) or "telemetry" (seen directly)."""

    id: str
    kind: str
    cause: str
    severity: str
    started: float  # wall time
    started_monotonic: float
    message: str
    figures: dict[str, Any] = field(default_factory=dict)
    cleared: float | None = None  # wall time

    @property
    def active(self) -> bool:
        return self.cleared is None

    def summary(self) -> str:
        """One line for the systemd STATUS and ``status``: severity, cause, the figure that matters."""
        return f"{self.severity.upper()} {self.cause}: {self.message}".replace("\n", " ")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "cause": self.cause,
            "severity": self.severity,
            "started": self.started,
            "cleared": self.cleared,
            "message": self.message,
            "figures": _jsonable(self.figures),
            "summary": self.summary(),
        }


@dataclass
class AlertEvent:
    """A change to an alert: ``action`` is "raised", "updated" (cause or severity changed) or "cleared"."""

    action: str
    alert: Alert  # a snapshot, safe to keep
    wall: float

    @property
    def topic(self) -> str:
        return f"alert.{self.action}"

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "time": self.wall, "alert": self.alert.to_dict()}


# --------------------------------------------------------------------------- monitor


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
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self._wall = wall_clock
        self.expect_clocks_locked = expect_clocks_locked
        self._lock = threading.RLock()
        self._window: deque[SynthesisRecord] = deque(maxlen=cfg.window_count)
        #: (frames per chunk, nfe, seconds per chunk) of clean requests, for the fit.
        self._learning: list[tuple[float, int, float]] = []
        #: The points behind the learned baseline, and clean requests of sizes or step counts
        #: it cannot judge yet (see _widen).
        self._fit_points: list[tuple[float, int, float]] = []
        self._outside: list[tuple[float, int, float]] = []
        self._baseline: Baseline | None = None
        self._alerts: dict[str, Alert] = {}  # key: "rtf" or "telemetry:<cause>"
        self._history: deque[dict[str, Any]] = deque(maxlen=cfg.history_size)
        self._ids = itertools.count(1)
        self._healthy_streak = 0
        self._unhealthy_streak = 0
        self._last_telemetry: TelemetrySample | None = None
        self._expected_mode: tuple[int | None, str | None] | None = None
        self._locked_max_mhz: float | None = None
        self._conditions = {"clocks_off": _TelemetryCondition(), "power_mode_changed": _TelemetryCondition()}
        self._records_total = 0
        self._rejected_total = 0

    # ---------------------------------------------------------------- inputs

    def calibrate(self, points: Iterable[Sequence[float]]) -> Baseline:
        """Set a provisional baseline from warm-up timings: (mel_frames, nfe, seconds[, chunks]).

        A learned baseline (from real requests) replaces it once enough are seen.
        Raises ValueError when the points cannot make a baseline.
        """
        pairs = []
        for point in points:
            if len(point) not in (3, 4):
                raise ValueError(f"calibration point {point!r}: expected (mel_frames, nfe, seconds[, chunks])")
            frames, nfe, seconds = float(point[0]), float(point[1]), float(point[2])
            chunks = float(point[3]) if len(point) == 4 else 1.0
            if chunks < 1:
                raise ValueError(f"calibration point {point!r}: chunks must be >= 1")
            pairs.append((frames / chunks, int(nfe), seconds / chunks))
        baseline = Baseline.fit(pairs, source="warmup")
        with self._lock:
            if self._baseline is None or self._baseline.source == "warmup":
                self._baseline = baseline
        logger.info("RTF baseline from warm-up %s", kv(**_baseline_fields(baseline)))
        return baseline

    def expect_power_mode(self, mode_id: int | None = None, mode_name: str | None = None) -> None:
        """Tell the monitor which power mode the daemon applied; otherwise the first one seen is expected."""
        with self._lock:
            self._expected_mode = (mode_id, mode_name)

    def reset_baseline(self) -> None:
        """Forget the learned baseline (e.g. after a model or JetPack change) and learn it again."""
        with self._lock:
            self._baseline = None if self._baseline is None or self._baseline.source == "learned" else self._baseline
            self._learning.clear()
            self._fit_points.clear()
            self._outside.clear()
            self._window.clear()

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
            if rec.telemetry is not None:
                self._learn_from_telemetry(rec.telemetry)
            self._window.append(rec)
            if not self._judges(rec):
                self._prune(rec.monotonic)
                self._widen(rec)  # a size or step count the baseline cannot judge: learn from it instead
                return []
            self._prune(rec.monotonic)
            self._maybe_learn(rec)
            if self._baseline is None:
                return []
            return self._evaluate()

    def observe_telemetry(self, sample: TelemetrySample) -> list[AlertEvent]:
        """Watch clocks and power mode directly, so they alert even while no requests arrive."""
        with self._lock:
            self._last_telemetry = sample
            self._learn_from_telemetry(sample)
            events: list[AlertEvent] = []
            checks = {
                "clocks_off": self._clocks_off(sample),
                "power_mode_changed": self._mode_changed(sample),
            }
            for cause, bad in checks.items():
                if bad is None:  # the source could not tell: keep the counters as they are
                    continue
                cond = self._conditions[cause]
                key = f"telemetry:{cause}"
                if bad:
                    cond.bad, cond.good = cond.bad + 1, 0
                    if key not in self._alerts and cond.bad >= self.cfg.telemetry_confirm:
                        figures = self._telemetry_figures(sample)
                        events.append(self._raise(key, "telemetry", cause, "warning", figures))
                else:
                    cond.good, cond.bad = cond.good + 1, 0
                    if key in self._alerts and cond.good >= self.cfg.telemetry_confirm:
                        events.append(self._clear(key, self._telemetry_figures(sample)))
            return events

    # ---------------------------------------------------------------- outputs

    @property
    def baseline(self) -> Baseline | None:
        return self._baseline

    @property
    def locked_gpu_max_mhz(self) -> float | None:
        return self._locked_max_mhz

    def active_alerts(self) -> list[Alert]:
        with self._lock:
            return [copy.deepcopy(a) for a in self._alerts.values()]

    def telemetry_healthy(self, sample: TelemetrySample) -> bool | None:
        """Clocks locked at their maximum in the expected power mode?  None when it cannot tell."""
        with self._lock:
            verdicts = [self._clocks_off(sample), self._mode_changed(sample), self._clock_low(sample)]
        if any(v is True for v in verdicts):
            return False
        if all(v is None for v in verdicts):
            return None
        return True

    def window_stats(self) -> dict[str, Any]:
        with self._lock:
            self._prune(self._clock())
            recs = list(self._window)
            ratios = self._ratios(recs)
            return {
                "n": len(recs),
                "ratio": _stats(ratios) if ratios else None,
                "rtf": _stats([r.rtf for r in recs]) if recs else None,
                "last_rtf": _finite(recs[-1].rtf) if recs else None,
                "median_rtf": _finite(_median([r.rtf for r in recs])) if recs else None,
            }

    def status(self) -> dict[str, Any]:
        """JSON-serialisable snapshot for ``ishowtts-edge status``."""
        with self._lock:
            baseline = self._baseline
            window = self.window_stats()
            tele = self._last_telemetry
            return _jsonable(
                {
                    "enabled": self.cfg.enabled,
                    "baseline": baseline.to_dict() if baseline else None,
                    "learning": None
                    if baseline is not None and baseline.source == "learned"
                    else {"have": len(self._learning), "need": self.cfg.baseline_samples},
                    "window": window,
                    "thresholds": {
                        "cv": self.cfg.cv_threshold,
                        "slowdown": self.cfg.slowdown_threshold,
                        "clock_drop": self.cfg.clock_drop_threshold,
                    },
                    "active_alerts": [a.to_dict() for a in self._alerts.values()],
                    "history": list(self._history)[-HISTORY_IN_STATUS:],
                    "expected_power_mode": _mode_dict(self._expected_mode),
                    "locked_gpu_max_mhz": self._locked_max_mhz,
                    "last_telemetry": _telemetry_brief(tele) if tele else None,
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

    def _ratios(self, recs: Iterable[SynthesisRecord]) -> list[float]:
        if self._baseline is None:
            return []
        out = []
        for r in recs:
            if not self._judges(r):
                continue
            expected = self._baseline.expected(r.work_frames, r.nfe_step, r.chunks)
            if expected > 0:
                out.append(r.synthesis_seconds / expected)
        return out

    def _learn_from_telemetry(self, sample: TelemetrySample) -> None:
        if self._expected_mode is None and (sample.nvpmodel_id is not None or sample.nvpmodel_name):
            self._expected_mode = (sample.nvpmodel_id, sample.nvpmodel_name)
        if self._locked_max_mhz is None and sample.jetson_clocks and sample.gpu_max_mhz:
            self._locked_max_mhz = float(sample.gpu_max_mhz)

    def _clean_for_learning(self, rec: SynthesisRecord) -> bool:
        """Only requests on a healthy-looking board may teach the baseline."""
        # RTF alerts do not block learning: under a skewed warm-up baseline they may be the
        # baseline's fault, and each record's own telemetry already screens out bad hardware.
        if any(a.kind == "telemetry" for a in self._alerts.values()):
            return False
        tele = rec.telemetry
        if tele is None:
            return True  # no telemetry at all (dev machine, dead jtop): learn anyway, status says so
        if tele.throttle:
            return False
        if self._clocks_off(tele) or self._mode_changed(tele):
            return False
        # With clocks deliberately left to the governor, a low clock is normal, not a fault.
        return not (self.expect_clocks_locked and self._clock_low(tele))

    def _maybe_learn(self, rec: SynthesisRecord) -> None:
        if self._baseline is not None and self._baseline.source == "learned":
            return
        if not self._clean_for_learning(rec):
            return
        self._learning.append(rec.fit_point)
        if len(self._learning) < self.cfg.baseline_samples:
            return
        learned = Baseline.fit(self._learning, source="learned")
        previous = self._baseline
        self._baseline = learned
        self._fit_points = list(self._learning)
        self._learning.clear()
        fields = _baseline_fields(learned)
        if previous is not None:
            # How far warm-up was off: large values mean first-call effects skewed it.
            fields["vs_warmup"] = _mean_ratio(learned, previous, self._window)
        logger.info("RTF baseline learned %s", kv(**fields))

    def _judges(self, rec: SynthesisRecord) -> bool:
        """Whether the current baseline can judge this record (a warm-up baseline judges all)."""
        baseline = self._baseline
        return (baseline is None or baseline.source != "learned"
                or baseline.covers(rec.work_frames / rec.chunks, rec.nfe_step))

    def _widen(self, rec: SynthesisRecord) -> None:
        """Refit the baseline once a few clean requests it cannot judge are in.

        Learned from one request size (an app that always sends sentences), the baseline is
        proportional and would call a much shorter text slow: its fixed cost per chunk is
        unknown.  Learned at one step count, its per-step cost is folded into the fixed
        cost, and would call short texts at more steps slow.  Such requests are not
        judged; the first WIDEN_SAMPLES clean ones are added to the points the baseline
        came from, which then tell the costs apart.
        """
        # Unlike the first learning, not during an RTF alert either: the learned baseline says
        # the board is slow then, and refitting would take the slowdown in as normal.
        if self._alerts or not self._clean_for_learning(rec):
            return
        self._outside.append(rec.fit_point)
        if len(self._outside) < WIDEN_SAMPLES:
            return
        previous = self._baseline
        points = (self._fit_points + self._outside)[-MAX_FIT_POINTS:]
        self._baseline = Baseline.fit(points, source="learned")
        self._fit_points, self._outside = points, []
        fields = _baseline_fields(self._baseline)
        if previous is not None:
            fields["was_work"] = f"{previous.work_lo:.0f}-{previous.work_hi:.0f}"
            fields["was_nfe"] = ",".join(map(str, previous.nfe_values)) or "any"
        changed = previous is None or (previous.narrow, previous.nfe_values) != (self._baseline.narrow,
                                                                                 self._baseline.nfe_values)
        # Info when what it can judge changed; a refit that changed nothing is not news.
        logger.log(logging.INFO if changed else logging.DEBUG,
                   "RTF baseline widened to new request sizes %s", kv(**fields))

    def _clocks_off(self, tele: TelemetrySample) -> bool | None:
        if not self.expect_clocks_locked or tele.jetson_clocks is None:
            return None
        return not tele.jetson_clocks

    def _mode_changed(self, tele: TelemetrySample) -> bool | None:
        if self._expected_mode is None:
            return None
        want_id, want_name = self._expected_mode
        if want_id is not None and tele.nvpmodel_id is not None:
            return tele.nvpmodel_id != want_id
        if want_name and tele.nvpmodel_name:
            return tele.nvpmodel_name.lower() != want_name.lower()
        return None

    def _reference_max(self, tele: TelemetrySample) -> float | None:
        return self._locked_max_mhz or tele.gpu_max_mhz or tele.gpu_hw_max_mhz

    def _clock_low(self, tele: TelemetrySample) -> bool | None:
        ref = self._reference_max(tele)
        if tele.gpu_cur_mhz is None or not ref:
            return None
        return tele.gpu_cur_mhz < ref * (1.0 - self.cfg.clock_drop_threshold)

    def _hot(self, tele: TelemetrySample) -> bool:
        """Thermal or over-current evidence.  "gpu_below_min" alone is not: a clock that merely
        fell below its locked minimum is what clock_drift means."""
        hottest = tele.hottest
        flags = [f for f in tele.throttle if f != "gpu_below_min"]
        return bool(flags) or (hottest is not None and hottest[1] >= self.cfg.hot_c)

    def _attribute(self, recs: Sequence[SynthesisRecord]) -> str:
        """Most specific cause that at least half of the recent telemetry supports."""
        samples = [r.telemetry for r in recs if r.telemetry is not None]
        if self._last_telemetry is not None:
            samples.append(self._last_telemetry)
        if not samples:
            return "unknown"

        def share(test: Callable[[TelemetrySample], bool | None]) -> float:
            votes = [test(t) for t in samples]
            known = [v for v in votes if v is not None]
            return sum(known) / len(known) if known else 0.0

        checks: dict[str, Callable[[TelemetrySample], bool | None]] = {
            "power_mode_changed": self._mode_changed,
            "clocks_off": self._clocks_off,
            "thermal_throttle": lambda t: (self._clock_low(t) is True) and self._hot(t),
            "clock_drift": self._clock_low,
        }
        for cause, test in checks.items():
            if share(test) >= 0.5:
                return cause
        return "unknown"

    def _evaluate(self) -> list[AlertEvent]:
        recs = list(self._window)
        ratios = self._ratios(recs)
        if len(ratios) < self.cfg.min_samples:
            return []
        cfg = self.cfg
        whole = _stats(ratios)
        recent_recs = recs[-cfg.recent_count :]
        recent = _stats(ratios[-cfg.recent_count :])
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
            and self._baseline.source == "learned"
            and self.expect_clocks_locked
        )
        slow_threshold = cfg.slowdown_threshold if self.expect_clocks_locked else cfg.unmanaged_slowdown_threshold
        active = self._alerts.get("rtf")
        figures = self._rtf_figures(recs, whole, recent, slowdown, recent_recs)

        if active is None:
            if slowdown > slow_threshold or (spread_trusted and spread > cfg.cv_threshold):
                self._unhealthy_streak += 1
                if self._unhealthy_streak >= cfg.raise_after:
                    self._unhealthy_streak = 0
                    cause = self._attribute(recent_recs)
                    severity = self._severity(slowdown, spread)
                    return [self._raise("rtf", "rtf", cause, severity, figures)]
            else:
                self._unhealthy_streak = 0
            return []

        # Active: recovery is judged on the recent syntheses alone (the window still holds
        # the slow ones), against lower thresholds, for clear_after syntheses in a row.
        recovered = (
            (recent["median"] if self.expect_clocks_locked else whole["median"]) - 1.0
            < slow_threshold * cfg.clear_ratio
            and recent["jitter"] < cfg.cv_threshold * cfg.clear_ratio
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
        severity = self._severity(slowdown, spread)
        if severity == "warning" and active.severity == "error":
            severity = "error"  # never downgrade while active: avoids warning/error flapping
        if cause != active.cause or severity != active.severity:
            active.cause, active.severity = cause, severity
            active.message = self._rtf_message(cause, figures)
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
            "median_rtf": _median([r.rtf for r in recs]),
            "last_rtf": recs[-1].rtf,
        }
        tele = next((r.telemetry for r in reversed(recent_recs) if r.telemetry is not None), None)
        tele = self._last_telemetry or tele
        if tele is not None:
            figures.update(self._telemetry_figures(tele))
        return figures

    def _telemetry_figures(self, tele: TelemetrySample) -> dict[str, Any]:
        hottest = tele.hottest
        return {
            "gpu_cur_mhz": tele.gpu_cur_mhz,
            "gpu_max_mhz": self._reference_max(tele),
            "jetson_clocks": tele.jetson_clocks,
            "nvpmodel": tele.nvpmodel_name if tele.nvpmodel_name is not None else tele.nvpmodel_id,
            "expected_nvpmodel": _mode_label(self._expected_mode),
            "hottest_zone": hottest[0] if hottest else None,
            "temp_c": hottest[1] if hottest else None,
            "throttle": ",".join(tele.throttle) if tele.throttle else None,
        }

    def _rtf_message(self, cause: str, f: dict[str, Any]) -> str:
        text = f"synthesis {f['slowdown'] * 100:+.0f}% vs baseline, jitter {f['jitter'] * 100:.1f}%"
        return text + _cause_detail(cause, f)

    def _raise(self, key: str, kind: str, cause: str, severity: str, figures: dict[str, Any]) -> AlertEvent:
        if kind == "rtf":
            message = self._rtf_message(cause, figures)
            figures = dict(figures, peak_slowdown=figures["slowdown"])
        else:
            message = _cause_detail(cause, figures).lstrip("; ") or cause
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
        alert.figures = dict(alert.figures, **{f"cleared_{k}": v for k, v in figures.items() if k in _CLEAR_KEYS})
        alert.figures["duration_s"] = self._clock() - alert.started_monotonic
        event = AlertEvent("cleared", copy.deepcopy(alert), alert.cleared)
        self._history.append(event.to_dict())
        if key.startswith("telemetry:"):
            self._conditions[key.split(":", 1)[1]] = _TelemetryCondition()
        return event


_CLEAR_KEYS = ("slowdown", "jitter", "recent_median_ratio", "median_rtf", "gpu_cur_mhz", "gpu_max_mhz",
               "jetson_clocks", "nvpmodel", "temp_c")


def _cause_detail(cause: str, f: dict[str, Any]) -> str:
    if cause == "clock_drift":
        return f"; GPU at {_num(f.get('gpu_cur_mhz'))} of {_num(f.get('gpu_max_mhz'))} MHz"
    if cause == "clocks_off":
        return "; jetson_clocks is off"
    if cause == "power_mode_changed":
        return f"; power mode {f.get('nvpmodel')} (expected {f.get('expected_nvpmodel')})"
    if cause == "thermal_throttle":
        extra = f", throttle {f['throttle']}" if f.get("throttle") else ""
        return (
            f"; GPU at {_num(f.get('gpu_cur_mhz'))} of {_num(f.get('gpu_max_mhz'))} MHz, "
            f"{f.get('hottest_zone')} {_num(f.get('temp_c'))} C{extra}"
        )
    return "; clocks look normal (load?)"


# --------------------------------------------------------------------------- journal


def log_event(event: AlertEvent) -> None:
    """One journal line per raise/update/clear, greppable by its key=value fields."""
    alert = event.alert
    f = alert.figures
    fields: dict[str, Any] = dict(
        event=f"alert_{event.action}",
        id=alert.id,
        cause=alert.cause,
        severity=alert.severity,
        kind=alert.kind,
    )
    if event.action == "cleared":
        # The figures at clearing time, plus how long and how bad it was.
        for key in _CLEAR_KEYS:
            if f.get(f"cleared_{key}") is not None:
                fields[key] = f[f"cleared_{key}"]
        for key in ("peak_slowdown", "duration_s"):
            if f.get(key) is not None:
                fields[key] = f[key]
        logger.info("alert cleared %s", kv(**fields))
        return
    for key in ("slowdown", "jitter", "median_rtf", "gpu_cur_mhz", "gpu_max_mhz", "jetson_clocks",
                "nvpmodel", "temp_c", "throttle"):
        if f.get(key) is not None:
            fields[key] = f[key]
    level = logging.ERROR if alert.severity == "error" else logging.WARNING
    logger.log(level, "%s %s", alert.summary(), kv(**fields))


# --------------------------------------------------------------------------- remediation


class Remediator:
    """Re-applies power mode and clocks when an alert says they drifted, at most every
    ``remediate_min_interval_s`` and ``remediate_max_attempts`` times per alert, then
    verifies: telemetry back at the locked maximum, then the alert clearing.

    ``apply_fn()`` is the daemon's ``HelperClient.apply``; it fails by raising or by
    returning something with ``ok`` false.  Outcomes go to ``on_outcome(dict)``; nothing
    here raises into the caller.  With ``background=True`` apply_fn runs in its own
    thread, because the helper may take tens of seconds (nvpmodel retries).
    """

    def __init__(
        self,
        cfg: MonitorConfig,
        apply_fn: Callable[[], Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_outcome: Callable[[dict[str, Any]], None] | None = None,
        background: bool = True,
    ) -> None:
        self.cfg = cfg
        self._apply_fn = apply_fn
        self._clock = clock
        self._wall = wall_clock
        self.on_outcome = on_outcome
        self._background = background
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._phase = "idle"  # idle | applying | verifying
        self._target: Alert | None = None
        self._last_attempt: float | None = None
        self._verify_deadline: float | None = None
        self._clocks_restored = False
        self._attempts: dict[str, int] = {}
        self._rate_limited_noted: set[str] = set()
        self._gave_up_noted: set[str] = set()
        self._cleared_while_applying: set[str] = set()
        self._last_outcome: dict[str, Any] | None = None
        self._totals = {"attempts": 0, "failed": 0, "recovered": 0, "not_recovered": 0}

    def poll(self, active: Sequence[Alert]) -> None:
        """Start an attempt for the first remediable active alert if the limits allow."""
        if not self.cfg.remediate:
            return
        with self._lock:
            self._check_deadline()
            if self._phase != "idle":
                return
            for alert in active:
                if alert.cause in REMEDIABLE_CAUSES and alert.active:
                    self._try(alert)
                    return

    def on_telemetry(self, healthy: bool | None) -> None:
        """Feed the verdict of :meth:`RtfMonitor.telemetry_healthy` for the newest sample."""
        with self._lock:
            if self._phase == "verifying" and healthy and not self._clocks_restored:
                self._clocks_restored = True
                self._emit("clocks_restored", self._target, logging.INFO)
            self._check_deadline()

    def on_cleared(self, alert: Alert) -> None:
        with self._lock:
            self._attempts.pop(alert.id, None)
            self._rate_limited_noted.discard(alert.id)
            self._gave_up_noted.discard(alert.id)
            if self._target is not None and self._target.id == alert.id and self._phase == "applying":
                self._cleared_while_applying.add(alert.id)
            if self._target is not None and self._target.id == alert.id and self._phase == "verifying":
                self._totals["recovered"] += 1
                self._emit("recovered", alert, logging.INFO)
                self._reset_phase()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for a background apply to finish (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def state(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            return _jsonable(
                {
                    "enabled": self.cfg.remediate,
                    "phase": self._phase,
                    "target": self._target.id if self._target else None,
                    "last_attempt_ago_s": None if self._last_attempt is None else now - self._last_attempt,
                    "next_allowed_in_s": self._wait_left(now),
                    "clocks_restored": self._clocks_restored if self._phase == "verifying" else None,
                    "last_outcome": self._last_outcome,
                    **self._totals,
                }
            )

    # ---------------------------------------------------------------- internals

    def _wait_left(self, now: float) -> float:
        if self._last_attempt is None:
            return 0.0
        return max(0.0, self.cfg.remediate_min_interval_s - (now - self._last_attempt))

    def _try(self, alert: Alert) -> None:
        now = self._clock()
        attempts = self._attempts.get(alert.id, 0)
        if attempts >= self.cfg.remediate_max_attempts:
            if alert.id not in self._gave_up_noted:
                self._gave_up_noted.add(alert.id)
                self._emit("gave_up", alert, logging.ERROR, attempts=attempts)
            return
        wait = self._wait_left(now)
        if wait > 0:
            if alert.id not in self._rate_limited_noted:
                self._rate_limited_noted.add(alert.id)
                self._emit("rate_limited", alert, logging.INFO, retry_in_s=wait)
            return
        self._rate_limited_noted.discard(alert.id)
        self._attempts[alert.id] = attempts + 1
        self._totals["attempts"] += 1
        self._last_attempt = now
        self._phase = "applying"
        self._target = copy.deepcopy(alert)
        self._emit("applying", alert, logging.WARNING, attempt=attempts + 1)
        if self._background:
            self._thread = threading.Thread(target=self._apply, name="remediate", daemon=True)
            self._thread.start()
        else:
            self._apply()

    def _apply(self) -> None:
        target = self._target
        started = self._clock()
        try:
            result = self._apply_fn()
            ok, detail = _apply_verdict(result)
        except Exception as exc:  # the helper may be gone, refuse, time out: report, never raise
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        elapsed = self._clock() - started
        with self._lock:
            if ok:
                self._phase = "verifying"
                self._clocks_restored = False
                self._verify_deadline = self._clock() + self.cfg.remediate_verify_s
                self._emit("applied", target, logging.WARNING, detail=detail, elapsed_s=elapsed)
                if target is not None and target.id in self._cleared_while_applying:
                    self._cleared_while_applying.discard(target.id)
                    self._totals["recovered"] += 1
                    self._emit("recovered", target, logging.INFO)
                    self._reset_phase()
            else:
                self._totals["failed"] += 1
                self._emit("apply_failed", target, logging.ERROR, detail=detail, elapsed_s=elapsed)
                if target is not None:
                    self._cleared_while_applying.discard(target.id)
                self._reset_phase()

    def _check_deadline(self) -> None:
        if self._phase == "verifying" and self._verify_deadline is not None and self._clock() >= self._verify_deadline:
            self._totals["not_recovered"] += 1
            self._emit("not_recovered", self._target, logging.ERROR, clocks_restored=self._clocks_restored)
            self._reset_phase()

    def _reset_phase(self) -> None:
        self._phase = "idle"
        self._target = None
        self._verify_deadline = None
        self._clocks_restored = False

    def _emit(self, outcome: str, alert: Alert | None, level: int, **extra: Any) -> None:
        payload = {
            "outcome": outcome,
            "time": self._wall(),
            "alert_id": alert.id if alert else None,
            "cause": alert.cause if alert else None,
            **extra,
        }
        payload = _jsonable(payload)
        self._last_outcome = payload
        fields = {k: v for k, v in payload.items() if k != "time" and v is not None and v != ""}
        logger.log(level, "remediation %s", kv(**fields))
        if self.on_outcome is not None:
            try:
                self.on_outcome(payload)
            except Exception:
                logger.exception("remediation outcome handler failed")


def _apply_verdict(result: Any) -> tuple[bool, str]:
    if isinstance(result, dict):
        ok = result.get("ok", True)
        detail = result.get("error") or result.get("message") or ""
        return bool(ok), str(detail)
    ok = getattr(result, "ok", True)
    detail = getattr(result, "error", None) or getattr(result, "message", None) or ""
    return bool(ok), str(detail)


# --------------------------------------------------------------------------- hub


class EventSink(Protocol):
    def publish(self, topic: str, payload: dict[str, Any]) -> Any: ...


class MonitorHub:
    """What the daemon talks to: feed it results and telemetry, read status and the STATUS line.

    Fans every alert change out to the journal, the event publisher (any object with
    ``publish(topic, payload)``, e.g. :class:`ishowtts_edge.events.EventPublisher`) and the
    remediator.  It never raises into the daemon: a monitor fault must not fail a synthesis.
    """

    def __init__(
        self,
        cfg: MonitorConfig,
        *,
        publisher: EventSink | None = None,
        apply_fn: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        expect_clocks_locked: bool = True,
        background_remediation: bool = True,
        telemetry_max_age_s: float = 5.0,
    ) -> None:
        self.cfg = cfg
        self.publisher = publisher
        self._clock = clock
        self._wall = wall_clock
        self._telemetry_max_age_s = telemetry_max_age_s
        self._recent_telemetry: deque[TelemetrySample] = deque(maxlen=256)
        self._telemetry_lock = threading.Lock()
        self.monitor = RtfMonitor(cfg, clock=clock, wall_clock=wall_clock, expect_clocks_locked=expect_clocks_locked)
        self.remediator: Remediator | None = None
        if apply_fn is not None:
            self.remediator = Remediator(
                cfg,
                apply_fn,
                clock=clock,
                wall_clock=wall_clock,
                on_outcome=self._on_remediation,
                background=background_remediation,
            )

    def expect_power_mode(self, mode_id: int | None, mode_name: str | None) -> None:
        """The power mode preflight set: a different one later is a cause (mode_changed)."""
        self.monitor.expect_power_mode(mode_id, mode_name)

    def expect_locked_clocks(self) -> None:
        """Preflight locked the clocks: from now on, unlocked clocks are a cause (clocks_off)."""
        self.monitor.expect_clocks_locked = True

    def calibrate(self, points: Iterable[Sequence[float]]) -> Baseline | None:
        try:
            return self.monitor.calibrate(points)
        except (ValueError, TypeError, IndexError) as exc:
            logger.warning("RTF warm-up calibration ignored, baseline will be learned %s", kv(error=exc))
            return None

    def on_synthesis(
        self,
        result: "SynthesisResult",
        telemetry: TelemetrySample | None = None,
        *,
        request_id: str = "",
    ) -> list[AlertEvent]:
        """Record a finished synthesis with the telemetry sample nearest in time.

        Without ``telemetry`` the hub picks, from the samples given to :meth:`on_telemetry`,
        the one nearest the middle of the synthesis (none if all are older than
        ``telemetry_max_age_s`` from it).
        """
        if not self.cfg.enabled:
            return []
        try:
            if telemetry is None:
                telemetry = self.nearest_telemetry(self._clock() - float(result.synthesis_seconds) / 2.0)
            rec = SynthesisRecord.from_result(
                result, request_id=request_id, telemetry=telemetry, monotonic=self._clock(), wall=self._wall()
            )
        except Exception as exc:
            logger.warning("synthesis not monitored %s", kv(request_id=request_id, error=exc))
            return []
        return self.on_record(rec)

    def on_record(self, rec: SynthesisRecord) -> list[AlertEvent]:
        if not self.cfg.enabled:
            return []
        try:
            events = self.monitor.record(rec)
        except ValueError as exc:
            logger.warning("synthesis not monitored %s", kv(request_id=rec.request_id, error=exc))
            return []
        except Exception:
            logger.exception("RTF monitor failed on a record")
            return []
        logger.debug(
            "synthesis timing %s",
            kv(request_id=rec.request_id, rtf=rec.rtf, seconds=rec.synthesis_seconds, frames=rec.mel_frames,
               nfe=rec.nfe_step),
        )
        self._dispatch(events)
        return events

    def on_telemetry(self, sample: TelemetrySample) -> list[AlertEvent]:
        """Feed every telemetry sample (the sampler thread calls this at its interval)."""
        if not self.cfg.enabled:
            return []
        with self._telemetry_lock:
            self._recent_telemetry.append(sample)
        try:
            events = self.monitor.observe_telemetry(sample)
            healthy = self.monitor.telemetry_healthy(sample)
        except Exception:
            logger.exception("RTF monitor failed on a telemetry sample")
            return []
        if self.remediator is not None:
            self.remediator.on_telemetry(healthy)
        self._dispatch(events)
        return events

    def nearest_telemetry(self, monotonic: float) -> TelemetrySample | None:
        with self._telemetry_lock:
            samples = list(self._recent_telemetry)
        if not samples:
            return None
        best = min(samples, key=lambda t: abs(t.monotonic - monotonic))
        return best if abs(best.monotonic - monotonic) <= self._telemetry_max_age_s else None

    def active_alerts(self) -> list[Alert]:
        return self.monitor.active_alerts()

    def status(self) -> dict[str, Any]:
        if not self.cfg.enabled:
            return {"enabled": False}
        status = self.monitor.status()
        status["remediation"] = self.remediator.state() if self.remediator else {"enabled": False}
        status["status_line"] = self.status_line()
        return status

    def status_line(self) -> str:
        """One line for systemd's STATUS=: the worst active alert, else the RTF figures."""
        if not self.cfg.enabled:
            return "RTF monitor off"
        alerts = self.monitor.active_alerts()
        if alerts:
            alerts.sort(key=lambda a: (a.severity != "error", a.kind != "rtf", a.started))
            line = alerts[0].summary()
            if len(alerts) > 1:
                line += f" (+{len(alerts) - 1} more)"
            return line
        stats = self.monitor.window_stats()
        baseline = self.monitor.baseline
        if stats["n"] == 0:
            return "RTF: no syntheses yet" if baseline else "RTF: learning baseline"
        line = f"RTF {stats['median_rtf']:.2f} (n={stats['n']})"
        if stats["ratio"]:
            line += f", {stats['ratio']['median']:.2f}x baseline"
        elif baseline is None:
            status = self.monitor.status()["learning"]
            line += f", learning baseline {status['have']}/{status['need']}"
        return line

    def publish_state(self) -> None:
        """Publish the "state" event: the monitor's current picture, after every alert change."""
        if self.publisher is None or not self.cfg.enabled:
            return
        payload = {
            "status_line": self.status_line(),
            "active_alerts": [a.to_dict() for a in self.monitor.active_alerts()],
            "window": self.monitor.window_stats(),
        }
        self._publish("state", payload)

    def close(self, timeout: float = 1.0) -> None:
        if self.remediator is not None:
            self.remediator.wait_idle(timeout)

    # ---------------------------------------------------------------- internals

    def _dispatch(self, events: list[AlertEvent]) -> None:
        for event in events:
            try:
                log_event(event)
            except Exception:
                logger.exception("could not log an alert event")
            self._publish(event.topic, event.to_dict())
            if self.remediator is not None and event.action == "cleared":
                self.remediator.on_cleared(event.alert)
        if events:
            self.publish_state()
        if self.remediator is not None:
            try:
                self.remediator.poll(self.monitor.active_alerts())
            except Exception:
                logger.exception("remediation poll failed")

    def _on_remediation(self, payload: dict[str, Any]) -> None:
        self._publish("remediation", payload)

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish(topic, payload)
        except Exception as exc:
            logger.warning("event not published %s", kv(topic=topic, error=exc))


# --------------------------------------------------------------------------- helpers


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("median of nothing")
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _stats(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, median, p90, cv (stdev/mean), robust_cv (1.4826*MAD/median) and jitter.

    jitter is the robust spread of successive differences, relative to the median
    (median|x[i]-x[i-1]| / (0.6745*sqrt 2) / median): an estimate of the noise sigma
    that one step change in level hardly moves.  Order matters, so pass values in time order.
    """
    diffs = [abs(b - a) for a, b in zip(values, values[1:])]
    s = sorted(values)
    n = len(s)
    mean = sum(s) / n
    median = _median(s)
    var = sum((v - mean) ** 2 for v in s) / (n - 1) if n > 1 else 0.0
    mad = _median([abs(v - median) for v in s])
    return {
        "n": n,
        "mean": mean,
        "median": median,
        "p90": _percentile(s, 0.9),
        "cv": math.sqrt(var) / mean if mean > 0 else 0.0,
        "robust_cv": 1.4826 * mad / median if median > 0 else 0.0,
        "jitter": (_median(diffs) / 0.9539 / median) if diffs and median > 0 else 0.0,
    }


def _mean_ratio(new: Baseline, old: Baseline, recs: Iterable[SynthesisRecord]) -> float | None:
    ratios = [
        old.expected(r.work_frames, r.nfe_step, r.chunks) / new.expected(r.work_frames, r.nfe_step, r.chunks)
        for r in recs
        if new.expected(r.work_frames, r.nfe_step, r.chunks) > 0
    ]
    return sum(ratios) / len(ratios) if ratios else None


def _baseline_fields(b: Baseline) -> dict[str, Any]:
    fields = {"source": b.source, "n": b.n, "intercept_s": b.intercept_s, "step_s": b.step_s,
              "s_per_frame_step": b.seconds_per_unit, "nfe": ",".join(map(str, b.nfe_values)) or "any"}
    if b.narrow:
        fields["judges_work"] = f"{b.work_lo / NARROW_SPREAD:.0f}-{b.work_hi * NARROW_SPREAD:.0f}"
    return fields


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(value: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN); tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return _finite(value)


def _num(value: Any) -> str:
    return "?" if value is None else f"{value:.0f}"


def _mode_label(mode: tuple[int | None, str | None] | None) -> Any:
    if mode is None:
        return None
    return mode[1] if mode[1] is not None else mode[0]


def _mode_dict(mode: tuple[int | None, str | None] | None) -> dict[str, Any] | None:
    return None if mode is None else {"id": mode[0], "name": mode[1]}


def _telemetry_brief(t: TelemetrySample) -> dict[str, Any]:
    hottest = t.hottest
    return {
        "monotonic": t.monotonic,
        "source": t.source,
        "gpu_cur_mhz": t.gpu_cur_mhz,
        "gpu_max_mhz": t.gpu_max_mhz,
        "jetson_clocks": t.jetson_clocks,
        "nvpmodel": t.nvpmodel_name,
        "hottest": {"zone": hottest[0], "c": hottest[1]} if hottest else None,
        "throttle": list(t.throttle),
    }
