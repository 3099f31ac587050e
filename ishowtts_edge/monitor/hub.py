"""The hub: what the daemon talks to, and the only part that fans out.

It feeds results and telemetry to the detector, sends every alert change to the journal,
the event publisher and the remediator, and gives the daemon its status and STATUS line.
It never raises into the daemon: a monitor fault must not fail a synthesis.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

from ..config import MonitorConfig
from ..logs import kv
from ..telemetry import TelemetryBuffer, TelemetrySample
from .alerts import Alert, AlertEvent, log_event
from .baseline import Baseline
from .detector import RtfMonitor
from .records import SynthesisRecord
from .remediation import Remediator

if TYPE_CHECKING:
    from ..engine import SynthesisResult

logger = logging.getLogger(__package__)


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
        telemetry: TelemetryBuffer | None = None,
        hot_c: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.publisher = publisher
        self._clock = clock
        self._wall = wall_clock
        #: The sampler's buffer, where a synthesis finds the sample taken while it ran.
        self.telemetry = telemetry
        self.monitor = RtfMonitor(cfg, clock=clock, wall_clock=wall_clock, expect_clocks_locked=expect_clocks_locked,
                                  hot_c=hot_c)
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

        Without ``telemetry`` the hub asks the sampler's buffer for the sample nearest the
        middle of the synthesis (none if none lies within ``telemetry.nearest_within_s`` of it).
        """
        if not self.cfg.enabled:
            return []
        try:
            if telemetry is None and self.telemetry is not None:
                telemetry = self.telemetry.nearest(self._clock() - float(result.synthesis_seconds) / 2.0)
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
            learning = self.monitor.learning_progress()
            line += f", learning baseline {learning['have']}/{learning['need']}"
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

