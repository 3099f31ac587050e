"""Summaries of timed series, shared by the benchmark, scripts/engine_ab.py and scripts/server_overhead.py."""

from __future__ import annotations

import statistics
from typing import Any


def summarize(values: list[float]) -> dict[str, Any]:
    """median, p90 (linear interpolation, numpy's default) and coefficient of variation (sample stdev / mean)."""
    n = len(values)
    mean = statistics.fmean(values)
    return {
        "n": n,
        "median": statistics.median(values),
        "p90": statistics.quantiles(values, n=10, method="inclusive")[8] if n > 1 else values[0],
        "cv": statistics.stdev(values) / mean if n > 1 and mean > 0 else 0.0,
        "mean": mean,
        "min": min(values),
        "max": max(values),
        # in run order: a spread can be drift, a few outliers or two modes, which the summary hides
        "values": [round(v, 7) for v in values],
    }


def series_medians(series: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Median of the series' medians of ``key``, the worst p90, and each series; None when a series lacks it."""
    if not series or any(r.get(key) is None for r in series):
        return None
    return {
        "median": statistics.median([r[key]["median"] for r in series]),
        "p90_max": max(r[key]["p90"] for r in series),
        "per_series": [{"nfe": r["nfe"], "text": r["text"], **r[key]} for r in series],
    }


def safe_ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None where either is missing or the reference is 0 (no division error in a report)."""
    return value / reference if value is not None and reference else None
