"""Prometheus metrics: request latency, RTF, the monitor's verdicts and the board's clocks.

Per-request figures are real prometheus_client instruments, observed as requests end
(:meth:`Metrics.on_reply` from the server, :meth:`Metrics.on_synthesis` after a reply
left).  Everything else (state, queue, monitor window, alerts, telemetry) is read from
the daemon's own status and telemetry at collection time by :class:`DaemonCollector`,
so nothing is kept twice and nothing goes stale between scrapes.

Two ways out, and no network socket in the daemon: :class:`TextfileWriter` rewrites
``ishowtts-edge.prom`` in node_exporter's textfile directory every few seconds (a
write to a hidden temporary file in the same directory, then a rename, so the
collector never reads half a file), and the ``metrics`` op returns the same text.

Several daemons on one host share that directory and node_exporter's one target, so each
but the packaged one has a name (:func:`daemon_name`): its own file, and a ``daemon``
label on every series.  node_exporter merges all files into one exposition and keeps only
one of two series with the same name and labels (logging an error), so a second file
alone would not do.  The label is not ``instance``: Prometheus sets that to the scraped
target and renames a file's own to ``exported_instance``.

Labels stay bounded: ops and error codes are the protocol's, voices the configured
ones (or "adhoc"), alert causes and severities the monitor's, zones and power modes
the board's; never a request id or a text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .config import MetricsConfig
from .logs import kv
from .protocol import OPS

log = logging.getLogger(__name__)

#: The daemon's states (daemon.py), each exported as its own 0/1 series.
STATES = ("starting", "loading", "warming", "ready", "degraded", "stopping")
#: Receipt to reply on an H200 is ~30 ms, on an Orin seconds: both ends get resolution.
DURATION_BUCKETS = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
#: Waiting behind the running synthesis: zero when idle, whole syntheses when not.
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 5.0, 10.0, 30.0, 60.0)
#: RTF 0.007 on an H200 at NFE 7, tenths on an Orin, above 1 on a CPU.
RTF_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
TEXTFILE_NAME = "ishowtts-edge.prom"
#: The label telling apart the series of several daemons on one host.
DAEMON_LABEL = "daemon"
#: A derived name keeps the file name well under the 255 bytes a directory entry may have.
MAX_NAME_CHARS = 100
#: Board-supplied label values (zone and mode names) are cut to this length.
MAX_LABEL_CHARS = 64


def daemon_name(settings: Any) -> str:
    """This daemon's name among several on one host: ``[metrics] name``, else its endpoint made
    into a file name (``ipc:///run/edge-b/tts.sock`` -> ``run_edge-b``); "" at the packaged endpoint."""
    from .client import DEFAULT_ENDPOINT

    if settings.metrics.name:
        return settings.metrics.name
    endpoint = settings.endpoint
    if endpoint == DEFAULT_ENDPOINT:
        return ""
    where = endpoint.split("://", 1)[-1].removesuffix("/tts.sock")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", where).strip("_.")[:MAX_NAME_CHARS] or "_"


def textfile_name(name: str) -> str:
    return f"ishowtts-edge-{name}.prom" if name else TEXTFILE_NAME


def _label(value: Any) -> str:
    return str(value)[:MAX_LABEL_CHARS]


def _op_label(op: str | None) -> str:
    return op if op in OPS else "unknown"


class Metrics:
    """The daemon's registry: call the ``on_*`` hooks as requests end, read :meth:`exposition`."""

    def __init__(self, daemon: Any) -> None:
        # *_created series double the file for nothing a textfile reader uses (process-wide switch,
        # and this registry is the process's only one).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ishowtts_requests", "Requests answered, by op and outcome (ok or the error code).",
            ["op", "code"], registry=r)
        self.request_seconds = Histogram(
            "ishowtts_request_duration_seconds",
            "Synthesize requests answered with audio: receipt to reply sent.", buckets=DURATION_BUCKETS, registry=r)
        self.queue_seconds = Histogram(
            "ishowtts_queue_duration_seconds",
            "Synthesize requests: waiting behind other syntheses before their own started.",
            buckets=QUEUE_BUCKETS, registry=r)
        self.synthesis_seconds = Histogram(
            "ishowtts_synthesis_duration_seconds",
            "Engine time of successful syntheses (text and reference to samples).", buckets=DURATION_BUCKETS, registry=r)
        self.first_audio_seconds = Histogram(
            "ishowtts_time_to_first_audio_seconds",
            "Synthesize requests: receipt to the first audio sent (a stream's first audio message; "
            "otherwise the reply, which carries all of it).",
            buckets=DURATION_BUCKETS, registry=r)
        self.rtf = Histogram(
            "ishowtts_rtf", "Real-time factor of successful syntheses: synthesis seconds per audio second.",
            buckets=RTF_BUCKETS, registry=r)
        self.audio_seconds = Counter(
            "ishowtts_audio_seconds", "Seconds of audio synthesized, by voice (adhoc: a reference sent with the request).",
            ["voice"], registry=r)
        for op in (*OPS, "unknown"):  # zero series exist from the start: rate() and "== 0" work at once
            self.requests.labels(op=op, code="ok")
        r.register(DaemonCollector(daemon))
        settings = getattr(daemon, "settings", None)
        self.name = daemon_name(settings) if settings is not None else ""

    # -- hooks -------------------------------------------------------------------------

    def on_reply(self, op: str | None, code: str, seconds: float, queue_seconds: float | None = None,
                 first_audio_seconds: float | None = None) -> None:
        """A reply left: ``seconds`` from receipt; ``queue_seconds`` for a synthesis that ran;
        ``first_audio_seconds`` from receipt to a stream's first audio message."""
        op = _op_label(op)
        self.requests.labels(op=op, code=code).inc()
        if queue_seconds is not None:
            self.queue_seconds.observe(max(0.0, queue_seconds))
        if op == "synthesize" and code == "ok":
            self.request_seconds.observe(seconds)
            self.first_audio_seconds.observe(seconds if first_audio_seconds is None else first_audio_seconds)

    def on_synthesis(self, result: Any, voice: str | None) -> None:
        """A synthesis succeeded (engine SynthesisResult); ``voice`` is a configured id or None for adhoc."""
        self.synthesis_seconds.observe(float(result.synthesis_seconds))
        self.rtf.observe(float(result.rtf))
        self.audio_seconds.labels(voice=_label(voice or "adhoc")).inc(float(result.audio_seconds))

    # -- out ---------------------------------------------------------------------------

    def exposition(self) -> str:
        return generate_latest(_Labelled(self.registry, self.name) if self.name else self.registry).decode("utf-8")

    def reply(self) -> dict[str, Any]:
        """The ``metrics`` op's payload."""
        return {"content_type": CONTENT_TYPE_LATEST, "text": self.exposition()}


class _Labelled:
    """A registry's families with ``daemon="NAME"`` on every sample (prometheus_client has no
    labels common to a whole registry)."""

    def __init__(self, registry: CollectorRegistry, name: str) -> None:
        self.registry = registry
        self.name = name

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():  # built afresh at each collection: ours to change
            family.samples = [s._replace(labels={DAEMON_LABEL: self.name, **s.labels}) for s in family.samples]
            yield family


class DaemonCollector:
    """Gauges read from the daemon at collection time (its status(), sampler and monitor)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with what the board reports; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        d = self.daemon
        status = d.status()
        yield from self._service(status)
        yield from self._monitor(status.get("monitor"))
        sampler = getattr(d, "sampler", None)
        yield from self._telemetry(status, sampler.latest() if sampler is not None else None)

    # -- service -------------------------------------------------------------------------

    def _service(self, s: dict[str, Any]) -> Iterable[Metric]:
        engine = s.get("engine") or {}
        info = GaugeMetricFamily("ishowtts_build_info", "The daemon's version and the model it serves.",
                                 labels=["version", "model", "device", "dtype"])
        info.add_metric([__version__, *(_label(engine.get(k) or "") for k in ("model", "device", "dtype"))], 1)
        yield info
        start = getattr(self.daemon, "started", None)
        if start is not None:
            yield GaugeMetricFamily("ishowtts_start_time_seconds", "Unix time the daemon started.", value=start)
        state = GaugeMetricFamily("ishowtts_state", "1 for the daemon's current state, 0 for the others.",
                                  labels=["state"])
        for name in STATES:
            state.add_metric([name], 1 if s.get("state") == name else 0)
        yield state
        ready = bool(self.daemon.health().get("ready"))
        yield GaugeMetricFamily("ishowtts_ready", "1 while synthesis requests are accepted (ready, or degraded "
                                "with a loaded model).", value=1 if ready else 0)
        degraded = GaugeMetricFamily("ishowtts_degraded", "1 per cause keeping the daemon degraded.", labels=["cause"])
        for cause in sorted(s.get("degraded") or {}):
            degraded.add_metric([_label(cause)], 1)
        yield degraded
        yield GaugeMetricFamily("ishowtts_queue_depth", "Synthesize requests queued or running.",
                                value=(s.get("queue") or {}).get("pending", 0))
        settings = getattr(self.daemon, "settings", None)
        if settings is not None:
            yield GaugeMetricFamily("ishowtts_queue_capacity",
                                    "Synthesize requests queued or running before busy is answered.",
                                    value=settings.server.max_queue + 1)
        warmup = s.get("warmup") or {}
        if warmup.get("seconds") is not None:
            yield GaugeMetricFamily("ishowtts_warmup_seconds", "How long loading's warm-up (compiles, graphs) took.",
                                    value=warmup["seconds"])
        recompiles = engine.get("recompiles_since_ready")
        if isinstance(recompiles, int):
            yield CounterMetricFamily("ishowtts_recompilations",
                                      "torch.compile graphs compiled after READY (each costs a slow request).",
                                      value=recompiles)

    # -- monitor -----------------------------------------------------------------------

    def _monitor(self, m: dict[str, Any] | None) -> Iterable[Metric]:
        from .monitor import CAUSES, SEVERITIES

        alerts = GaugeMetricFamily("ishowtts_alerts_active", "Active RTF and telemetry alerts, by cause and severity.",
                                   labels=["cause", "severity"])
        counts = {(c, s): 0 for c in CAUSES for s in SEVERITIES}
        for alert in (m or {}).get("active_alerts") or []:
            key = (alert.get("cause"), alert.get("severity"))
            if key in counts:
                counts[key] += 1
        for (cause, severity), n in counts.items():
            alerts.add_metric([cause, severity], n)
        yield alerts
        if not m or not m.get("enabled", True):
            return
        window = m.get("window") or {}
        yield GaugeMetricFamily("ishowtts_rtf_window_samples", "Syntheses in the RTF monitor's window.",
                                value=window.get("n") or 0)
        figures = {
            "ishowtts_rtf_window_median": ("Median RTF over the monitor's window.", window.get("median_rtf")),
            "ishowtts_rtf_window_cv": ("Coefficient of variation (stdev/mean) of RTF over the window.",
                                       (window.get("rtf") or {}).get("cv")),
            "ishowtts_rtf_baseline_ratio": ("Median of measured/expected synthesis time over the window "
                                            "(1 = on the learned baseline).", (window.get("ratio") or {}).get("median")),
            "ishowtts_rtf_baseline_ratio_jitter": ("Request-to-request variation of measured/expected time "
                                                   "(what monitor.cv_threshold is compared with).",
                                                   (window.get("ratio") or {}).get("jitter")),
        }
        for name, (help_text, value) in figures.items():
            if isinstance(value, (int, float)):
                yield GaugeMetricFamily(name, help_text, value=value)
        rem = m.get("remediation") or {}
        if rem.get("enabled"):
            yield CounterMetricFamily("ishowtts_remediation_attempts", "Re-applications of power mode and clocks "
                                      "after an alert.", value=rem.get("attempts") or 0)
            outcomes = CounterMetricFamily("ishowtts_remediations", "Finished re-applications, by outcome.",
                                           labels=["outcome"])
            for key in ("recovered", "failed", "not_recovered"):
                outcomes.add_metric([key], rem.get(key) or 0)
            yield outcomes

    # -- telemetry ---------------------------------------------------------------------

    def _telemetry(self, s: dict[str, Any], t: Any) -> Iterable[Metric]:
        tstatus = s.get("telemetry") or {}
        up = GaugeMetricFamily("ishowtts_telemetry_available", "1 while a telemetry source delivers fresh samples.",
                               labels=["source"])
        up.add_metric([_label(tstatus.get("source") or "none")], 1 if t is not None else 0)
        yield up
        monitor = s.get("monitor") or {}
        targets = (s.get("hardware") or {}).get("clock_targets") or {}
        gpu_target = targets.get("gpu_hz") or _mhz(monitor.get("locked_gpu_max_mhz"))
        if gpu_target:
            yield GaugeMetricFamily("ishowtts_gpu_clock_target_hertz", "The GPU clock locked at start (jetson_clocks).",
                                    value=gpu_target)
        if targets.get("cpu_hz"):
            yield GaugeMetricFamily("ishowtts_cpu_clock_target_hertz",
                                    "The lowest CPU core clock locked at start (jetson_clocks).", value=targets["cpu_hz"])
        if targets.get("emc_hz"):
            yield GaugeMetricFamily("ishowtts_emc_clock_target_hertz", "The memory (EMC) clock locked at start.",
                                    value=targets["emc_hz"])
        expected = (monitor.get("expected_power_mode") or {}).get("id")
        if isinstance(expected, int):
            yield GaugeMetricFamily("ishowtts_power_mode_expected_id", "The power mode (nvpmodel id) the daemon wants.",
                                    value=expected)
        if t is None:
            return
        gauges = (
            ("ishowtts_gpu_clock_hertz", "GPU clock now.", _mhz(t.gpu_cur_mhz)),
            ("ishowtts_gpu_clock_max_hertz", "The GPU's current upper clock limit.", _mhz(t.gpu_max_mhz)),
            ("ishowtts_cpu_clock_min_hertz", "Clock of the slowest online CPU core now.",
             _mhz(min(t.cpu_cur_mhz)) if t.cpu_cur_mhz else None),
            ("ishowtts_emc_clock_hertz", "Memory (EMC) clock now.", _mhz(t.emc_cur_mhz)),
            ("ishowtts_gpu_utilization_ratio", "GPU load, 0 to 1.",
             t.gpu_load_pct / 100 if t.gpu_load_pct is not None else None),
            ("ishowtts_power_watts", "Board power draw, where the board reports it.",
             t.power_mw / 1000 if t.power_mw is not None else None),
            ("ishowtts_clocks_locked", "1 when CPU and GPU clocks are locked at their maximum (jetson_clocks).",
             None if t.jetson_clocks is None else int(t.jetson_clocks)),
        )
        for name, help_text, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)
        if t.nvpmodel_id is not None:
            mode = GaugeMetricFamily("ishowtts_power_mode_id", "The power mode now (nvpmodel id; name as label).",
                                     labels=["name"])
            mode.add_metric([_label(t.nvpmodel_name or "")], t.nvpmodel_id)
            yield mode
        temps = GaugeMetricFamily("ishowtts_temperature_celsius", "Temperature by thermal zone.", labels=["zone"])
        for zone, celsius in sorted(t.temperatures_c.items()):
            temps.add_metric([_label(zone)], celsius)
        yield temps
        yield GaugeMetricFamily("ishowtts_throttled", "1 while telemetry shows throttling of any kind.",
                                value=1 if t.throttle else 0)
        reasons = GaugeMetricFamily("ishowtts_throttle_reasons",
                                    "1 per throttling indication now (ocN: over-current events, thermal, ...).",
                                    labels=["reason"])
        for reason in sorted(set(t.throttle)):
            reasons.add_metric([_label(reason)], 1)
        yield reasons


def _mhz(value: float | None) -> float | None:
    return float(value) * 1e6 if value is not None else None


class TextfileWriter:
    """Rewrites the daemon's textfile (:func:`textfile_name`) in node_exporter's textfile directory
    every ``interval_s``.

    The directory belongs to node_exporter's package and is never created here: absent
    means no node_exporter (one INFO line), unwritable means the sandbox or permissions
    (one WARNING naming the fix).  Each is logged again only when it changes, and a
    recovery gets an INFO line.  The file is removed at stop, so a stopped daemon leaves
    no figures that look current.
    """

    def __init__(self, metrics: Metrics, cfg: MetricsConfig) -> None:
        self.metrics = metrics
        self.dir = Path(cfg.textfile_dir)
        self.path = self.dir / textfile_name(metrics.name)
        #: Hidden, and not *.prom: the collector never reads it.
        self.tmp = self.dir / f".{self.path.name}.tmp"
        self.interval_s = cfg.interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._problem: str | None = None
        self.last_write: float | None = None
        self.writes = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics-textfile", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        for path in (self.path, self.tmp):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("metrics textfile not removed %s", kv(path=path, reason=exc.strerror))

    def status(self) -> dict[str, Any]:
        return {"textfile": str(self.path), "written": self._problem is None and self.last_write is not None,
                "last_write": self.last_write, "writes": self.writes, "problem": self._problem}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.write_once()
            except Exception as exc:  # a collector bug must not end the metrics, nor the daemon
                problem = f"{type(exc).__name__}: {exc}"
                if problem != self._problem:  # once per distinct fault, not every interval
                    log.exception("metrics textfile write failed")
                self._problem = problem
            self._stop.wait(self.interval_s)

    def write_once(self) -> bool:
        """Write the exposition to a temporary file beside the target, then rename it over."""
        data = self.metrics.exposition().encode("utf-8")
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                os.fchmod(fd, 0o644)  # the unit's UMask=0007 would hide it from node_exporter's user
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self._report(exc)
            return False
        if self._problem is not None:
            log.info("metrics textfile written again %s", kv(path=self.path))
        elif self.last_write is None:
            log.info("metrics textfile %s", kv(path=self.path, interval_s=self.interval_s))
        self._problem = None
        self.last_write = time.time()
        self.writes += 1
        return True

    def _report(self, exc: OSError) -> None:
        if not self.dir.is_dir():
            problem = f"{self.dir} does not exist (is prometheus-node-exporter installed?)"
            level = logging.INFO
        else:
            problem = f"cannot write in {self.dir}: {exc.strerror}"
            level = logging.WARNING
        if problem != self._problem:
            hint = ("" if level == logging.INFO else
                    " (the unit's ReadWritePaths= must name it, and user ishowtts-edge needs write access:"
                    " docs/operations.md, Monitoring)")
            log.log(level, "metrics textfile not written %s%s", kv(reason=problem), hint)
        self._problem = problem
