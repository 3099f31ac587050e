"""Small statistics and JSON helpers shared by the monitor's modules.

Plain functions over sequences of floats: the detector, the baseline fit and the status
output all need the same median and the same "no NaN in JSON" rule, and none of them
should own it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("median of nothing")
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def stats(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, median, p90, cv (stdev/mean), robust_cv (1.4826*MAD/median) and jitter.

    jitter is the robust spread of successive differences, relative to the median
    (median|x[i]-x[i-1]| / (0.6745*sqrt 2) / median): an estimate of the noise sigma
    that one step change in level hardly moves.  Order matters, so pass values in time order.
    """
    diffs = [abs(b - a) for a, b in zip(values, values[1:])]
    s = sorted(values)
    n = len(s)
    mean = sum(s) / n
    mid = median(s)
    var = sum((v - mean) ** 2 for v in s) / (n - 1) if n > 1 else 0.0
    mad = median([abs(v - mid) for v in s])
    return {
        "n": n,
        "mean": mean,
        "median": mid,
        "p90": percentile(s, 0.9),
        "cv": math.sqrt(var) / mean if mean > 0 else 0.0,
        "robust_cv": 1.4826 * mad / mid if mid > 0 else 0.0,
        "jitter": (median(diffs) / 0.9539 / mid) if diffs and mid > 0 else 0.0,
    }


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def jsonable(value: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN); tuples become lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return finite(value)

