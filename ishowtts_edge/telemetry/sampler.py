"""The sampler: one background thread reading the first working source, with fallback."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from ..config import TelemetryConfig
from ..logs import kv
from .jtop import JtopSource
from .nvml import NvmlSource
from .sample import TelemetryBuffer, TelemetrySample
from .source import SourceUnavailable, TelemetrySource
from .sysfs import SysfsSource

#: The package's name, as the journal has always shown these lines.
log = logging.getLogger(__package__)


def open_direct_source(cfg: TelemetryConfig | None = None) -> TelemetrySource | None:
    """A source read synchronously by tools (ishowtts-edge bench, engine_ab.py), not by the daemon.

    sysfs first (a Jetson's devfreq node, no service needed), then NVML (a dGPU host);
    jtop is left out because a benchmark must not depend on its service.  None where neither
    opens, e.g. a CPU-only machine.
    """
    cfg = cfg or TelemetryConfig()
    for source in (SysfsSource(cfg), NvmlSource(cfg)):
        try:
            source.open()
            source.read()
            return source
        except SourceUnavailable:
            source.close()
    return None


class TelemetrySampler:
    """Background sampling with source fallback.  Thread-safe readers."""

    def __init__(
        self,
        cfg: TelemetryConfig,
        on_sample: list[Callable[[TelemetrySample], None]] | None = None,
        *,
        source_factories: dict[str, Callable[[], TelemetrySource]] | None = None,
    ):
        self.cfg = cfg
        #: Called in the sampler thread with each new sample; exceptions are logged, not fatal.
        self.on_sample: list[Callable[[TelemetrySample], None]] = list(on_sample or [])
        factories: dict[str, Callable[[], TelemetrySource]] = {
            "jtop": lambda: JtopSource(cfg),
            "sysfs": lambda: SysfsSource(cfg),
            "nvml": lambda: NvmlSource(cfg),
        }
        factories.update(source_factories or {})
        self._factories = {name: factories[name] for name in cfg.sources}
        self._lock = threading.Lock()
        #: The samples of the last ``buffer_s`` seconds: the monitor pairs syntheses with them.
        self.buffer = TelemetryBuffer.for_config(cfg)
        self._source: TelemetrySource | None = None
        self._errors: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        #: Sources whose last failure repeated the one before it, with no sample in between.
        self._repeating: set[str] = set()
        self._last_error: str | None = None
        self._switches: deque[dict[str, Any]] = deque(maxlen=10)
        self._samples = 0
        self._stop = threading.Event()
        self._settled = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def wait_settled(self, timeout: float) -> bool:
        """Wait until the first pass is over: a source delivered a sample, or all were tried.

        Opening sources costs CPU (importing jtop, NVML's init); a caller that is about to
        serve waits for it here rather than have it overlap its first requests.
        """
        return self._settled.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            source, self._source = self._source, None
        if source is not None:
            source.close()

    # -- readers

    def latest(self) -> TelemetrySample | None:
        """The newest sample while a source is live and it is fresh (``stale_after_s``), else None."""
        sample = self.buffer.newest()
        with self._lock:
            live = self._source is not None
        if sample is None or not live or time.monotonic() - sample.monotonic > self.cfg.stale_after_s:
            return None
        return sample

    def status(self) -> dict[str, Any]:
        with self._lock:
            source = self._source.name if self._source is not None else None
            sample = self.buffer.newest()
            errors = dict(self._errors)
            switches = list(self._switches)
            last_error = self._last_error
            count = self._samples
        age = time.monotonic() - sample.monotonic if sample is not None else None
        available = source is not None and age is not None and age <= self.cfg.stale_after_s
        if available:
            summary = f"{source}, last sample {age:.1f} s ago"
        elif source is not None:
            summary = f"{source} connected, no recent sample"
        else:
            reasons = "; ".join(f"{name}: {why}" for name, why in errors.items()) or "not started"
            summary = f"unavailable ({reasons})"
        return {
            "available": available,
            "source": source,
            "summary": summary,
            "age_s": round(age, 3) if age is not None else None,
            "last_error": last_error,
            "source_errors": errors,
            "switches": switches,
            "samples": count,
        }

    # -- the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._choose_source()
            source = self._source
            if source is not None:
                try:
                    sample = source.read()
                except SourceUnavailable as exc:
                    self._fail(source, str(exc))
                    continue  # fall back now, not an interval later
                except Exception as exc:  # noqa: BLE001 - a reader bug must not kill telemetry
                    log.exception("telemetry source %s failed", source.name)
                    self._fail(source, f"{type(exc).__name__}: {exc}")
                    continue
                else:
                    self._read_ok(source.name)
                    self._publish(sample)
            self._settled.set()  # a sample, or every source tried and failed
            self._stop.wait(max(0.0, self.cfg.interval_s - (time.monotonic() - started)))

    def _choose_source(self) -> None:
        """Keep the current source unless one earlier in cfg.sources is due for a retry."""
        now = time.monotonic()
        names = list(self._factories)
        current = self._source.name if self._source is not None else None
        limit = names.index(current) if current is not None else len(names)
        for name in names[:limit]:
            if self._retry_at.get(name, 0.0) > now:
                continue
            source = self._factories[name]()
            try:
                source.open()
            except SourceUnavailable as exc:
                self._mark_failed(name, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001
                self._mark_failed(name, f"{type(exc).__name__}: {exc}")
                continue
            self._switch_to(source)
            return

    def _switch_to(self, source: TelemetrySource) -> None:
        with self._lock:
            previous, self._source = self._source, source
            self._retry_at.pop(source.name, None)  # its error and back-off stay until it delivers (_read_ok)
            skipped = {name: why for name, why in self._errors.items() if name in self._factories}
            names = list(self._factories)
            ahead = names[: names.index(source.name)]
            # Nothing new when the source reopens after failing the same way again, or is the
            # fallback while every source ahead of it does: a flapping jtop would log each round.
            repeat = (source.name in self._repeating if source.name in self._errors
                      else bool(ahead) and all(name in self._repeating for name in ahead))
            self._switches.append({"wall": time.time(), "from": previous.name if previous else None, "to": source.name})
        if previous is not None:
            previous.close()
        preferred = next(iter(self._factories))
        # Running on a fallback is worth a warning; getting the preferred source (back) is news.
        level = logging.DEBUG if repeat else logging.INFO if source.name == preferred else logging.WARNING
        log.log(level, "telemetry source %s", kv(
            source=source.name,
            previous=previous.name if previous else "none",
            unavailable="; ".join(f"{n}: {w}" for n, w in skipped.items()) or "none",
        ))

    def _read_ok(self, name: str) -> None:
        """A sample came: the source works, so its next failure starts from the shortest back-off."""
        if name in self._backoff or name in self._errors:
            with self._lock:
                self._backoff.pop(name, None)
                reason = self._errors.pop(name, None)
                quiet = name in self._repeating
                self._repeating.discard(name)
            if quiet:  # its reopening was logged at debug only
                log.info("telemetry source delivering again %s", kv(source=name, after=reason or "none"))

    def _fail(self, source: TelemetrySource, reason: str) -> None:
        source.close()
        with self._lock:
            if self._source is source:
                self._source = None
            self._switches.append({"wall": time.time(), "from": source.name, "to": None, "reason": reason})
            again = self._errors.get(source.name) == reason  # opened, then failed as before: no sample between
        self._mark_failed(source.name, reason)
        # A source that opens and then fails the same way every time (a jtop that connects but
        # sends nothing) would otherwise write a warning per retry, forever.
        log.log(logging.DEBUG if again else logging.WARNING, "telemetry source lost %s", kv(source=source.name, reason=reason))

    def _mark_failed(self, name: str, reason: str) -> None:
        delay = min(self._backoff.get(name, self.cfg.reconnect_min_s / 2) * 2, self.cfg.reconnect_max_s)
        with self._lock:
            first = name not in self._errors or self._errors[name] != reason
            if first:
                self._repeating.discard(name)
            else:
                self._repeating.add(name)
            self._errors[name] = reason
            self._last_error = f"{name}: {reason}"
            self._backoff[name] = delay
            self._retry_at[name] = time.monotonic() + delay
        if first:
            log.info("telemetry source unavailable %s", kv(source=name, reason=reason, retry_in_s=delay))

    def _publish(self, sample: TelemetrySample) -> None:
        self.buffer.append(sample)
        with self._lock:
            self._samples += 1
        for callback in list(self.on_sample):
            try:
                callback(sample)
            except Exception:  # noqa: BLE001
                log.exception("telemetry on_sample callback failed")
