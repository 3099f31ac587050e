"""The baseline: what a synthesis of a given size should take on this board, and how it is learned.

The detector judges ``measured / expected`` rather than RTF, so the fit of expected time
against request size (and its learning from real requests, then widening to sizes it has
not seen) is the monitor's model of the healthy board.  It knows nothing of alerts or
telemetry: the detector decides which requests are clean enough to learn from.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..logs import kv
from .records import SynthesisRecord
from .stats import finite, median

logger = logging.getLogger(__package__)

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
            "work_range": [finite(self.work_lo), finite(self.work_hi)],
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
                slope = median([b for _, b in fits.values()])
                fixed = {n: fits[n][0] if n in fits else max(0.0, median([y - slope * x for x, y in g]))
                         for n, g in usable.items()}
                pairs = [(n1, n2) for n1, n2 in itertools.combinations(sorted(fixed), 2) if n2 / n1 >= 1.5]
                step = median([(fixed[n2] - fixed[n1]) / (n2 - n1) for n1, n2 in pairs])
                intercept = median([fixed[n] - step * n for n in fixed])
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
        slope = median([y / x for x, y in group])
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
    intercept = median(slopes)
    slope = median([z - intercept * u for u, z in per_unit])
    return (intercept, slope) if slope > 0 and intercept >= 0 else None


def warmup_baseline(points: Iterable[Sequence[float]]) -> Baseline:
    """A provisional baseline from warm-up timings: (mel_frames, nfe, seconds[, chunks]).

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
    return Baseline.fit(pairs, source="warmup")


class BaselineLearner:
    """The baseline in use and the clean requests it is learned and widened from.

    Not thread-safe on its own: the detector calls it under its lock, and only with
    requests it found clean (healthy telemetry, see RtfMonitor._clean_for_learning).
    """

    def __init__(self, samples_needed: int) -> None:
        self.samples_needed = samples_needed
        self.baseline: Baseline | None = None
        #: (frames per chunk, nfe, seconds per chunk) of clean requests, for the fit.
        self._learning: list[tuple[float, int, float]] = []
        #: The points behind the learned baseline, and clean requests of sizes or step counts
        #: it cannot judge yet (see widen).
        self._fit_points: list[tuple[float, int, float]] = []
        self._outside: list[tuple[float, int, float]] = []

    @property
    def learned(self) -> bool:
        return self.baseline is not None and self.baseline.source == "learned"

    def use_warmup(self, baseline: Baseline) -> None:
        """Take a warm-up baseline unless one learned from real requests is already in use."""
        if self.baseline is None or self.baseline.source == "warmup":
            self.baseline = baseline

    def reset(self) -> None:
        """Forget the learned baseline and every point; a warm-up baseline stays until relearned."""
        self.baseline = None if self.baseline is None or self.baseline.source == "learned" else self.baseline
        self._learning.clear()
        self._fit_points.clear()
        self._outside.clear()

    def progress(self) -> dict[str, int] | None:
        """Requests learned so far and needed; None once the baseline is learned."""
        return None if self.learned else {"have": len(self._learning), "need": self.samples_needed}

    def judges(self, rec: SynthesisRecord) -> bool:
        """Whether the current baseline can judge this record (a warm-up baseline judges all)."""
        baseline = self.baseline
        return (baseline is None or baseline.source != "learned"
                or baseline.covers(rec.work_frames / rec.chunks, rec.nfe_step))

    def learn(self, rec: SynthesisRecord, window: Iterable[SynthesisRecord]) -> None:
        """Add a clean request; fit the learned baseline once ``samples_needed`` are in."""
        self._learning.append(rec.fit_point)
        if len(self._learning) < self.samples_needed:
            return
        learned = Baseline.fit(self._learning, source="learned")
        previous = self.baseline
        self.baseline = learned
        self._fit_points = list(self._learning)
        self._learning.clear()
        fields = baseline_fields(learned)
        if previous is not None:
            # How far warm-up was off: large values mean first-call effects skewed it.
            fields["vs_warmup"] = _mean_ratio(learned, previous, window)
        logger.info("RTF baseline learned %s", kv(**fields))

    def widen(self, rec: SynthesisRecord) -> None:
        """Refit the baseline once a few clean requests it cannot judge are in.

        Learned from one request size (an app that always sends sentences), the baseline is
        proportional and would call a much shorter text slow: its fixed cost per chunk is
        unknown.  Learned at one step count, its per-step cost is folded into the fixed
        cost, and would call short texts at more steps slow.  Such requests are not
        judged; the first WIDEN_SAMPLES clean ones are added to the points the baseline
        came from, which then tell the costs apart.
        """
        self._outside.append(rec.fit_point)
        if len(self._outside) < WIDEN_SAMPLES:
            return
        previous = self.baseline
        points = (self._fit_points + self._outside)[-MAX_FIT_POINTS:]
        self.baseline = Baseline.fit(points, source="learned")
        self._fit_points, self._outside = points, []
        fields = baseline_fields(self.baseline)
        if previous is not None:
            fields["was_work"] = f"{previous.work_lo:.0f}-{previous.work_hi:.0f}"
            fields["was_nfe"] = ",".join(map(str, previous.nfe_values)) or "any"
        changed = previous is None or (previous.narrow, previous.nfe_values) != (self.baseline.narrow,
                                                                                self.baseline.nfe_values)
        # Info when what it can judge changed; a refit that changed nothing is not news.
        logger.log(logging.INFO if changed else logging.DEBUG,
                   "RTF baseline widened to new request sizes %s", kv(**fields))


def _mean_ratio(new: Baseline, old: Baseline, recs: Iterable[SynthesisRecord]) -> float | None:
    ratios = [
        old.expected(r.work_frames, r.nfe_step, r.chunks) / new.expected(r.work_frames, r.nfe_step, r.chunks)
        for r in recs
        if new.expected(r.work_frames, r.nfe_step, r.chunks) > 0
    ]
    return sum(ratios) / len(ratios) if ratios else None


def baseline_fields(b: Baseline) -> dict[str, Any]:
    fields = {"source": b.source, "n": b.n, "intercept_s": b.intercept_s, "step_s": b.step_s,
              "s_per_frame_step": b.seconds_per_unit, "nfe": ",".join(map(str, b.nfe_values)) or "any"}
    if b.narrow:
        fields["judges_work"] = f"{b.work_lo / NARROW_SPREAD:.0f}-{b.work_hi * NARROW_SPREAD:.0f}"
    return fields
