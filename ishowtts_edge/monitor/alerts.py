"""Alerts, their changes, and how each reads in the journal and in ``status``.

The detector decides when an alert is raised, updated or cleared; this module decides
what it says: the one-line summary for systemd's STATUS, the message naming the cause
and the figure that matters, and the key=value journal line an owner can grep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..logs import kv
from .stats import jsonable

logger = logging.getLogger(__package__)

SEVERITIES = ("warning", "error")
#: Figures an alert keeps from the moment it cleared (as ``cleared_<key>``).
CLEAR_KEYS = ("slowdown", "jitter", "recent_median_ratio", "median_rtf", "gpu_cur_mhz", "gpu_max_mhz",
              "jetson_clocks", "nvpmodel", "temp_c")


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
            "figures": jsonable(self.figures),
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


def rtf_message(cause: str, f: dict[str, Any]) -> str:
    """The message of an RTF alert: how much slower, how noisy, and what telemetry says."""
    text = f"synthesis {f['slowdown'] * 100:+.0f}% vs baseline, jitter {f['jitter'] * 100:.1f}%"
    return text + cause_detail(cause, f)


def cause_detail(cause: str, f: dict[str, Any]) -> str:
    """What telemetry says about the cause, as "; ..." to append to a message."""
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
        for key in CLEAR_KEYS:
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


def _num(value: Any) -> str:
    return "?" if value is None else f"{value:.0f}"
