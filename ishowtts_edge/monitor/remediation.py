"""Remediation: re-apply power mode and clocks when an alert says they drifted, then verify.

Apart from the detector because it acts on the board (through hwctl, the privileged program,
slowly, possibly failing) and must be rate-limited and bounded per alert, while the
detector only watches.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any, Callable, Sequence

from ..config import MonitorConfig
from ..logs import kv
from .alerts import Alert
from .stats import jsonable

logger = logging.getLogger(__package__)

#: Causes that re-applying the power mode and jetson_clocks can fix.
REMEDIABLE_CAUSES = frozenset({"clock_drift", "clocks_off", "power_mode_changed"})


class Remediator:
    """Re-applies power mode and clocks when an alert says they drifted, at most every
    ``remediate_min_interval_s`` and ``remediate_max_attempts`` times per alert, then
    verifies: telemetry back at the locked maximum, then the alert clearing.

    ``apply_fn()`` is the daemon's ``HwctlClient.apply``; it fails by raising or by
    returning something with ``ok`` false.  Outcomes go to ``on_outcome(dict)``; nothing
    here raises into the caller.  With ``background=True`` apply_fn runs in its own
    thread, because hwctl may take tens of seconds (nvpmodel retries).
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
            return jsonable(
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
        except Exception as exc:  # hwctl may be gone, refuse, time out: report, never raise
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
        payload = jsonable(payload)
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
