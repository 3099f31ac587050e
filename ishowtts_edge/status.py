"""The ``status`` reply, systemd's STATUS= line and their human rendering, in one place.

:func:`build` assembles what ``status`` answers (and ``ishowtts-edge status --json``
prints) from the running daemon; :func:`line` is the one-line summary systemd shows;
:func:`render` turns a ``status`` reply (or its JSON) into what ``ishowtts-edge status``
prints.  Field meanings: docs/protocol.md, "status".
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import __version__


def build(daemon: Any) -> dict[str, Any]:
    """The ``status`` payload; answers even when the engine's describe() breaks."""
    engine = None
    if daemon.engine is not None:
        try:
            engine = daemon.engine.describe()
        except Exception as exc:  # status must answer even if describe() breaks
            engine = {"error": f"{type(exc).__name__}: {exc}"}
    service = daemon.service
    server = daemon.server
    settings = daemon.settings
    return {
        "version": __version__,
        "pid": os.getpid(),
        "state": service.state,
        "detail": service.detail(daemon.progress_message),
        "degraded": dict(service.degraded),
        "uptime_s": round(time.time() - daemon.started, 1),
        "endpoint": settings.endpoint,
        "events_endpoint": settings.events_endpoint,
        "config": str(settings.source_file) if settings.source_file else None,
        "engine": engine,
        "engine_error": daemon.engine_error,
        "warmup": daemon.warmup,
        "self_test": daemon.self_test,
        "voices": len(daemon.engine.voices()) if daemon.engine is not None else 0,
        "queue": {"pending": server.pending if server else 0},
        "requests": server.stats.to_dict() if server else {},
        "monitor": daemon.hub.status() if daemon.hub is not None else None,
        "hardware": _hardware(daemon),
        "telemetry": _telemetry(daemon.sampler),
        "metrics": daemon.textfile.status() if daemon.textfile is not None else None,
    }


def _telemetry(sampler: Any) -> dict[str, Any] | None:
    if sampler is None:
        return None
    if not sampler.started:
        return {"available": False, "source": None, "summary": "starts when the warm-up ends", "samples": 0}
    return sampler.status()


def _hardware(daemon: Any) -> dict[str, Any]:
    if not daemon.settings.hardware.enabled:
        return {"state": "disabled", "summary": "disabled in the config"}
    if daemon.preflight is None:
        return {"state": "pending", "summary": "preflight not run yet"}
    return daemon.preflight.to_dict()


def line(daemon: Any) -> str:
    """systemd's STATUS=: state, start-up progress, voices, the monitor's line, GPU clock, causes."""
    service = daemon.service
    parts = [service.state]
    if service.state in ("loading", "warming") and daemon.progress_message:
        parts.append(daemon.progress_message)
    if daemon.engine is not None:
        parts.append(f"voices {len(daemon.engine.voices())}")
    if daemon.hub is not None and daemon.engine is not None:
        parts.append(daemon.hub.status_line())
    latest = daemon.sampler.latest() if daemon.sampler is not None else None
    if latest is not None and latest.gpu_cur_mhz is not None:
        parts.append(f"GPU {latest.gpu_cur_mhz:.0f}/{latest.gpu_max_mhz or 0:.0f} MHz")
    if service.degraded:
        parts.append("degraded: " + ", ".join(sorted(service.degraded)))
    return " | ".join(parts)


# -- rendering (client side: works on the JSON a status reply carries) -------------------------------


def render(s: dict[str, Any]) -> str:
    """What ``ishowtts-edge status`` prints."""
    lines = [f"ishowtts-edge {s.get('version', '?')}  state: {s.get('state')}  pid {s.get('pid')}  up {s.get('uptime_s', 0):.0f} s"]
    if s.get("detail"):
        lines.append(f"  detail:    {s['detail']}")
    for key, reason in (s.get("degraded") or {}).items():
        lines.append(f"  degraded:  {key}: {reason}")
    e = s.get("engine") or {}
    if e:
        lines.append(
            f"  engine:    {e.get('model')} on {e.get('device')} {e.get('dtype')}"
            f"{' compiled' if e.get('compiled') else ' eager'}{' (DEMO: untrained voice)' if e.get('demo') else ''}"
        )
    w = s.get("warmup") or {}
    if w:
        lines.append(f"  warm-up:   {w.get('seconds')} s, {len(w.get('shapes') or [])} shape(s)")
    st = s.get("self_test") or {}
    if st:
        outcome = {True: f"passed in {st.get('seconds')} s", False: f"FAILED: {st.get('detail')}"}.get(
            st.get("ok"), st.get("detail") or "skipped"
        )
        lines.append(f"  self-test: {outcome}")
    lines.append(f"  voices:    {s.get('voices', 0)}    endpoint: {s.get('endpoint')}")
    hw = s.get("hardware") or {}
    if hw:
        lines.append(f"  hardware:  {hw.get('summary', hw.get('state'))}")
    t = s.get("telemetry") or {}
    if t:
        lines.append(f"  telemetry: {t.get('summary') or t.get('source') or t}")
    m = s.get("metrics") or {}
    if m:
        state = "written" if m.get("written") else f"not written: {m.get('problem') or 'not yet'}"
        lines.append(f"  metrics:   {m.get('textfile')} ({state})")
    monitor = s.get("monitor")
    if monitor:
        lines.extend("  " + text for text in render_monitor(monitor))
    req = (s.get("requests") or {}).get("requests") or {}
    if req:
        lines.append("  requests:  " + ", ".join(f"{k} {v}" for k, v in sorted(req.items())))
    return "\n".join(lines)


def render_monitor(status: dict[str, Any]) -> list[str]:
    """Human lines for ``ishowtts-edge status`` from :meth:`MonitorHub.status` (or its JSON)."""
    if not status.get("enabled", True):
        return ["RTF monitor: off"]
    lines = []
    window = status.get("window") or {}
    baseline = status.get("baseline")
    learning = status.get("learning")
    head = "RTF monitor: "
    if window.get("n"):
        head += f"median RTF {window['median_rtf']:.3f}, last {window['last_rtf']:.3f} (n={window['n']})"
        ratio = window.get("ratio")
        if ratio:
            head += f"; {ratio['median']:.2f}x baseline, jitter {ratio['jitter'] * 100:.1f}%"
    else:
        head += "no syntheses in the window"
    if baseline is None:
        head += "; no baseline yet"
    if learning:
        head += f"; learning baseline {learning['have']}/{learning['need']}"
    lines.append(head)
    active = status.get("active_alerts") or []
    lines.append("Active alerts:" if active else "Active alerts: none")
    for alert in active:
        lines.append(f"  {alert['summary']} (id {alert['id']}, since {_utc(alert['started'])})")
    history = status.get("history") or []
    if history:
        lines.append("Recent alert history:")
        for item in history:
            alert = item["alert"]
            extra = ""
            if item["action"] == "cleared" and alert["figures"].get("duration_s") is not None:
                extra = f" after {alert['figures']['duration_s']:.0f} s"
            lines.append(f"  {_utc(item['time'])} {item['action']:<7} {alert['id']} {alert['severity']} "
                         f"{alert['cause']}{extra}")
    rem = status.get("remediation") or {}
    if rem.get("enabled"):
        text = (f"Remediation: {rem['phase']}, attempts {rem['attempts']}, recovered {rem['recovered']}, "
                f"failed {rem['failed']}, not recovered {rem['not_recovered']}")
        last = rem.get("last_outcome")
        if last:
            text += f"; last: {last['outcome']} ({last.get('alert_id')}) at {_utc(last['time'])}"
        lines.append(text)
    else:
        lines.append("Remediation: off")
    return lines


def _utc(wall: float | None) -> str:
    if wall is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
