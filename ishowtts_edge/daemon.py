"""Daemon life cycle: start, load and warm up, serve, reload, stop.

The serving loop runs on the main thread from the first second, so ``status`` and
``health`` answer while the model is still loading; the engine loads on the synthesis
worker thread, which, once idle, reads requests itself (server/core.py says why).
Everything systemd hears comes from the loop: EXTEND_TIMEOUT_USEC only while
the loader reports progress, READY=1 after warm-up, WATCHDOG=1 only when the loop
itself is turning and the synthesis worker is not wedged, STOPPING=1 on SIGTERM.

A synthesize request comes from the server, goes to the engine and its result back to
the server, which replies and then hands the result to :meth:`Daemon.completed` (log,
metrics, RTF monitor).  The states live in service_state.py, the ``status`` reply in
status.py.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import resource
import secrets
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import zmq
from pydantic import BaseModel

from . import __version__
from . import status as status_report
from .config import ConfigError, Settings, load_settings
from .endpoints import EndpointError, claim
from .engine import AudioSink, SynthesisResult
from .logs import kv
from .notify import Notifier
from .protocol import ErrorCode, Limits, Request, ServiceError
from .server import Server, connect_endpoint
from .service_state import ServiceState

log = logging.getLogger(__name__)

#: A synthesis running longer than this means the worker is wedged: stop the watchdog pings.
MAX_JOB_SECONDS = 300.0
#: Loader silent for longer than this stops EXTEND_TIMEOUT_USEC, so systemd's timeout fires.
LOADER_STALL_SECONDS = 600.0
EXTEND_BY_SECONDS = 90.0
#: The longest READY waits for telemetry's first pass (a jtop that never answers must not hold it up).
SAMPLER_SETTLE_SECONDS = 10.0
STATUS_EVERY_SECONDS = 2.0
#: The self-test request before READY=1 runs on a warm engine: seconds even on a CPU.
SELF_TEST_TIMEOUT_S = 120.0
#: The GIL switch interval while serving (Python's default is 5 ms).  It bounds how long a
#: thread that wants the GIL back waits for one holding it; the synthesis worker gives the GIL
#: up at every CUDA synchronisation, so each burst of Python work elsewhere (telemetry, jtop's
#: client thread, a status request) could add up to 5 ms per hand-back to a ~30 ms request.
GIL_SWITCH_INTERVAL_S = 0.0005
#: Degraded causes that a synthesis succeeding disproves: the request path works again.
PASSING_CAUSES = ("out_of_memory", "self_test")
#: What SIGHUP applies; every other setting was built into sockets, threads or the model at start.
# [wyoming] is read by the Wyoming bridge, never by the daemon: a change is not one that waits for a restart here.
RELOADABLE_SETTINGS = ("default_voice", "voices", "wyoming")
#: At stop, after server.drain_timeout_s, how long a cancelled synthesis has to reach its next
#: step.  drain_timeout_s + this + a few seconds of closing must stay under the unit's TimeoutStopSec.
CANCEL_GRACE_S = 5.0
#: Exit status when the endpoint is taken by another process (EX_CANTCREAT); man page, operations.md.
EXIT_ENDPOINT_IN_USE = 73
#: The descriptor limit asked for when the hard limit is unlimited.
NOFILE_WANTED = 65536


class AlreadyRunning(RuntimeError):
    pass


def _acquire_lock(runtime_dir: Path) -> int:
    """One daemon per runtime directory: a second one would steal the ipc socket."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(runtime_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another ishowtts-edge daemon holds {runtime_dir / 'daemon.lock'}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (1024 by default is ~1,000 clients); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("descriptor limit not raised %s", kv(soft=soft, hard=hard, reason=exc))
    return soft


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notifier = Notifier()
        self.service = ServiceState(publish=self._publish, refresh=self._refresh_status)
        self.started = time.time()
        self.engine: Any = None
        self.engine_error: str | None = None
        self.warmup: dict[str, Any] | None = None
        self._progress_at = time.monotonic()
        #: What start-up is doing now (status ``detail`` while starting).
        self.progress_message = ""
        self._loading = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._ready_sent = False
        #: The request the daemon sends itself before READY=1 (see _self_test); None = not run.
        self.self_test: dict[str, Any] | None = None
        self._self_test_thread: threading.Thread | None = None
        self._self_test_prefix = f"self-test-{secrets.token_hex(6)}"  # not guessable: it skips the READY gate
        self._lock_fd: int | None = None
        self.server: Server | None = None
        self.publisher: Any = None
        self.hub: Any = None
        self.hwctl: Any = None  # HwctlClient, made at preflight or at the first remediation
        self.preflight: Any = None
        self.sampler: Any = None
        self.metrics: Any = None  # metrics.Metrics, from _on_start
        self.textfile: Any = None  # metrics.TextfileWriter when [metrics] textfile is on

    # -- SynthesisBackend ------------------------------------------------------------

    def accepting(self, request: Request) -> ServiceError | None:
        state = self.service.state
        if self.engine is not None and state == "warming" and self._is_self_test(request):
            return None  # the last step of warming up: see _self_test
        if self.engine is None or self.service.starting:
            detail = self.engine_error or f"engine is {state}"
            return ServiceError(ErrorCode.NOT_READY, detail)
        if request.params is not None and request.params.voice:  # "" means the default voice, as in the engine
            try:
                self.engine.check_voice(request.params.voice)
            except ServiceError as exc:
                return exc
        return None

    def synthesize(self, request: Request, sink: AudioSink | None = None) -> SynthesisResult:
        params = request.params
        assert params is not None
        reference = request.attachments[0] if request.attachments else None
        try:
            result = self.engine.synthesize(params, reference, cancel=request.cancel, sink=sink)
        except ServiceError as exc:
            if exc.code == ErrorCode.OUT_OF_MEMORY:
                self.service.degrade("out_of_memory", f"CUDA out of memory at {time.strftime('%H:%M:%S')}: {exc.message}")
            raise
        for cause in PASSING_CAUSES:
            self.service.recover(cause)
        return result

    def completed(self, request: Request, result: SynthesisResult) -> None:
        """The log line, metrics and the RTF monitor come after the reply left, so they add nothing to latency."""
        params = request.params
        if self.metrics is not None:  # the self-test is a request like any other here
            self.metrics.on_synthesis(result, result.voice)
        if self._is_self_test(request):
            return  # a short warm-up text: not a sample of what users get, so not monitored
        log.info(
            "synthesized %s",
            kv(
                id=request.id,
                voice=result.voice or "adhoc",
                chars=len(params.text) if params is not None else 0,
                audio_s=result.audio_seconds,
                synth_s=result.synthesis_seconds,
                rtf=result.rtf,
                nfe=result.nfe_step,
            ),
        )
        if self.hub is not None and self.hub.on_synthesis(result, request_id=request.id):
            self._refresh_status()  # an alert changed: show it at once

    def _on_telemetry(self, sample: Any) -> None:
        if self.hub is not None and self.hub.on_telemetry(sample):
            self._refresh_status()

    def control(self, request: Request) -> dict[str, Any]:
        if request.op == "ping":
            return {"pong": True, "state": self.service.state, "time": time.time()}
        if request.op == "health":
            return self.health()
        if request.op == "voices":
            return {"voices": self.engine.voices() if self.engine is not None else []}
        if request.op == "metrics":
            return self.metrics.reply()
        return self.status()

    # -- status ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.service.health(self.engine is not None, self.progress_message)

    def status(self) -> dict[str, Any]:
        return status_report.build(self)

    def status_line(self) -> str:
        return status_report.line(self)

    def _refresh_status(self) -> None:
        self.notifier.status(self.status_line())

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.publish(topic, payload)

    # -- life cycle ----------------------------------------------------------------

    def _progress(self, message: str) -> None:
        self._progress_at = time.monotonic()
        self.progress_message = message
        log.debug("progress %s", kv(step=message))

    def _load(self) -> None:
        """Runs on the synthesis worker thread (Server startup), before it takes any job."""
        # librosa's numba functions are cache=True and would write next to the installed
        # package, which an unprivileged daemon cannot: import fails ("no locator available").
        cache = self.settings.paths.cache_dir / "numba"
        if "NUMBA_CACHE_DIR" not in os.environ:
            try:
                cache.mkdir(parents=True, exist_ok=True)
                os.environ["NUMBA_CACHE_DIR"] = str(cache)
            except OSError as exc:
                log.warning("numba cache not set %s", kv(dir=cache, reason=exc.strerror))
        try:
            try:
                from .engine.loader import load_engine  # torch import happens here, off the serving loop
            except Exception as exc:  # a broken install (torch, f5-tts): say so and serve status
                self.engine_error = f"engine not importable: {type(exc).__name__}: {exc}"
                log.error("engine failed to import %s", kv(error=type(exc).__name__, reason=str(exc)))
                self.service.degraded["engine"] = self.engine_error
                self.service.set("degraded", self.engine_error)
            else:
                self._load_engine(load_engine)
        finally:
            self._start_sampling()
            self._loading.clear()

    def _load_engine(self, load_engine: Any) -> None:
        self._run_preflight()
        try:
            self.service.set("loading")
            engine = load_engine(self.settings, self._progress)
            self.service.set("warming")
            report = engine.warmup(self._progress)
            self.warmup = {
                "seconds": round(report.seconds, 3),
                "shapes": list(report.shapes),
                "compiled": report.compiled,
                "error": report.error,
            }
            log.info("warm-up done %s", kv(seconds=report.seconds, shapes=len(report.shapes), compiled=report.compiled))
            if report.error:
                self.service.degrade("compile", report.error)
            # No warm-up RTF baseline: warm-up runs are compiles and graph captures, not requests
            # (docs/monitoring.md); the monitor learns from the first healthy requests instead.
            # What exists now (torch, the model, compiled code) lives as long as the process; out of
            # the collector's generations, full collections no longer walk it and stall a request.
            gc.collect()
            gc.freeze()
            self.engine = engine  # still "warming": the self-test (see _serve) ends warming
        except Exception as exc:
            self.engine_error = f"model not loaded: {exc}"
            log.error("engine failed to load %s", kv(error=type(exc).__name__, reason=str(exc)))
            log.debug("engine load traceback", exc_info=True)
            self.service.degraded["engine"] = self.engine_error
            self.service.set("degraded", self.engine_error)

    def _run_preflight(self) -> None:
        """Bring the board to its performance state before warm-up, so kernels are tuned and timed at locked clocks."""
        cfg = self.settings.hardware
        if not cfg.enabled:
            return
        from .hwctl_client import HwctlClient
        from .preflight import preflight

        self._progress("hardware preflight")
        self.hwctl = HwctlClient(cfg)
        self.preflight = preflight(self.hwctl, cfg)
        if self.preflight.state == "degraded":
            self.service.degrade("hardware", self.preflight.message)
        if self.hub is not None and self.preflight.power_mode:
            self.hub.expect_power_mode(self.preflight.power_mode.get("id"), self.preflight.power_mode.get("name"))
        if self.hub is not None and cfg.apply_at_start and self.preflight.clocks_locked:
            self.hub.expect_locked_clocks()

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def request_reload(self, *_: object) -> None:
        self._reload.set()

    def _do_reload(self) -> None:
        """SIGHUP: re-read the voices and default_voice; other changes are named in the journal and wait for a restart."""
        self.notifier.reloading()
        try:
            fresh = load_settings(self.settings.source_file)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration\n%s", exc)
            self.notifier.ready(self.status_line())
            return
        # Sockets, the model, threads and the monitor were built from the running settings at
        # start; only the voices are re-read.  The rest is kept, so `status` shows what runs.
        for name in Settings.model_fields:
            if name in RELOADABLE_SETTINGS or name == "source_file":
                continue
            if getattr(fresh, name) != getattr(self.settings, name):
                section = f"[{name}]" if isinstance(getattr(fresh, name), BaseModel) else name
                log.warning("reload: %s changes need a restart; they are ignored until then", section)
                setattr(fresh, name, getattr(self.settings, name))
        self.settings = fresh
        if self.engine is not None:
            try:
                self.engine.reload_voices(self.settings)
            except Exception as exc:
                log.error("reload: voices not reloaded %s", kv(reason=str(exc)))
        log.info("reloaded %s", kv(config=self.settings.source_file, voices=len(self.engine.voices()) if self.engine else 0))
        self.notifier.ready(self.status_line())

    def run(self) -> int:
        self._lock_fd = _acquire_lock(self.settings.paths.runtime_dir)
        nofile = raise_nofile_limit()
        s = self.settings
        try:
            claim(s.endpoint)  # before anything else binds or starts: refuse a taken endpoint at once
        except EndpointError as exc:
            return self._refuse_endpoint(exc)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        limits = Limits(s.server.max_message_bytes, s.server.max_text_chars, s.server.max_reference_bytes)
        self._loading.set()
        self.server = Server(s.endpoint, self, limits, s.server.max_queue, startup=self._load,
                             max_queue_per_client=s.server.max_queue_per_client, max_connections=s.server.max_connections,
                             stream_window_s=s.server.stream_window_s)
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        self.notifier.extend_timeout(EXTEND_BY_SECONDS)
        self.notifier.status("starting")
        self._on_start()
        try:
            self.server.bind()  # starts the worker, which loads the engine
        except EndpointError as exc:  # taken between the probe and the bind
            self.server = None
            self._on_stop()
            return self._refuse_endpoint(exc)
        log.debug("descriptor limit %s", kv(nofile=nofile))
        worker_stopped = False
        try:
            self._serve()
        finally:
            worker_stopped = self._shutdown()
        if not worker_stopped:
            # The worker is still inside a native call (torch) that did not reach a cancellation
            # point.  Finalizing the interpreter now would end that thread from under C++ frames
            # when it next takes the GIL: "terminate called without an active exception", SIGABRT.
            # Everything is closed and logged already; leave without finalizing.
            log.warning("exiting with the synthesis worker still busy")
            logging.shutdown()
            os._exit(0)
        return 0

    def _refuse_endpoint(self, exc: EndpointError) -> int:
        log.error("cannot listen: %s", exc)
        self.notifier.status(f"cannot listen: {exc}")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        return EXIT_ENDPOINT_IN_USE

    def _on_start(self) -> None:
        """Events socket, RTF monitor and telemetry: all optional, all degrade rather than stop us."""
        from .events import EventPublisher, EventPublisherError
        from .monitor import MonitorHub
        from .telemetry import TelemetrySampler

        s = self.settings
        try:
            self.publisher = EventPublisher(s.events_endpoint)
        except EventPublisherError as exc:
            self.service.degrade("events", str(exc))
        # Made first: the hub reads the sampler's buffer; the sampler starts after the warm-up.
        self.sampler = TelemetrySampler(s.telemetry, on_sample=[self._on_telemetry])
        hw = s.hardware
        self.hub = MonitorHub(
            s.monitor,
            publisher=self.publisher,
            apply_fn=self._reapply if hw.enabled else None,
            # Not yet: telemetry starts before preflight has locked the clocks, and a board
            # fresh from boot has them unlocked; expecting them now raised a spurious
            # clocks_off alert (and a remediation racing preflight).  _run_preflight turns it on.
            expect_clocks_locked=False,
            telemetry=self.sampler.buffer,
            hot_c=s.telemetry.hot_tj_c,
        )
        self._start_metrics()

    def _start_metrics(self) -> None:
        """Per-request figures through the server's reply hook; the textfile from now until stop."""
        from .metrics import Metrics, TextfileWriter

        self.metrics = Metrics(self)
        if self.server is not None:
            self.server.on_reply = self.metrics.on_reply
        if self.settings.metrics.textfile:
            self.textfile = TextfileWriter(self.metrics, self.settings.metrics)
            self.textfile.start()

    def _reapply(self) -> dict[str, Any]:
        """Remediation: ask hwctl to apply the power mode and clocks again."""
        if self.hwctl is None:
            from .hwctl_client import HwctlClient

            self.hwctl = HwctlClient(self.settings.hardware)
        return self.hwctl.apply()

    def _start_sampling(self) -> None:
        """Telemetry samples from the end of the warm-up on, not during it.

        Sampling while torch.compile autotuned its kernels made inductor pick slower ones:
        on an H200 the daemon's kernels ran 35 % slower than the same compile without the
        sampler (docs/benchmarks.md, "The daemon's slower kernels").  The warm-up is where
        the compile happens, so the sampler waits for it; preflight does not need it.
        """
        if self.sampler is not None and not self._stop.is_set():
            self.sampler.start()
            # Opening the sources (jtop's import, NVML's init) before the self-test and READY,
            # not during the first requests (measured: first request 2.7x steady when it overlapped).
            settled = self.sampler.wait_settled(SAMPLER_SETTLE_SECONDS)
            log.info("telemetry sampling started %s", kv(interval_s=self.settings.telemetry.interval_s,
                                                         first_pass_done=settled))

    def _serve(self) -> None:
        assert self.server is not None
        watchdog_every = self.notifier.watchdog_interval()
        last_watchdog = last_status = last_extend = 0.0
        while not self._stop.is_set():
            self.server.poll(100)
            now = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                try:
                    self._do_reload()
                except Exception:  # a reload must never end the service it reloads
                    log.error("reload failed, keeping the running configuration\n%s", traceback.format_exc())
                    self.notifier.ready(self.status_line())
            loading = self._loading.is_set()
            if loading and now - last_extend > 10 and now - self._progress_at < LOADER_STALL_SECONDS:
                self.notifier.extend_timeout(EXTEND_BY_SECONDS)
                last_extend = now
            if not loading and not self._ready_sent and self._self_test_done():
                self._ready_sent = True
                self.notifier.ready(self.status_line())
                last_status = now
                log.info("READY %s", kv(state=self.service.state, endpoint=self.settings.endpoint))
            if now - last_status > STATUS_EVERY_SECONDS:
                self.notifier.status(self.status_line())
                last_status = now
            if watchdog_every is not None and now - last_watchdog >= watchdog_every:
                if self.server.worker_alive(MAX_JOB_SECONDS) and (self.engine is not None or loading or self.engine_error):
                    self.notifier.watchdog()
                    last_watchdog = now
                else:
                    log.error("synthesis worker is stuck; withholding watchdog pings so systemd restarts us")
        self._announce_stop()

    def _self_test_done(self) -> bool:
        """Start the self-test once the engine is up; True (and state ready) when READY may be sent."""
        if self.engine is None:
            return True
        if self._self_test_thread is None:
            self._progress("self-test request")
            self._self_test_thread = threading.Thread(target=self._self_test, name="self-test", daemon=True)
            self._self_test_thread.start()
        if self._self_test_thread.is_alive():
            return False
        self.service.finish_starting()
        return True

    def _is_self_test(self, request: Request) -> bool:
        return bool(request.id) and request.id.startswith(self._self_test_prefix)

    def _self_test(self) -> None:
        """One real ``synthesize`` through our own socket before READY=1.

        READY then means a request went the whole way (parse, queue, engine, encoding,
        ZeroMQ), and what is done once per process on that path (pyzmq's zero-copy
        machinery, the first large socket buffers) is not paid by the first user: on an
        H100 the first request after READY took ~5 ms longer in the daemon than later ones.
        """
        from .client import Client, ClientError

        voices = [v["id"] for v in self.engine.voices() if v.get("available")]
        voice = self.settings.default_voice if self.settings.default_voice in voices else (voices[0] if voices else None)
        if voice is None:
            self.self_test = {"ok": None, "detail": "skipped: no voice available"}
            log.warning("self-test skipped: no voice available")
            return
        started = time.perf_counter()
        try:
            with Client(connect_endpoint(self.settings.endpoint), timeout_s=SELF_TEST_TIMEOUT_S, retries=0,
                        id_prefix=self._self_test_prefix) as client:
                reply = client.synthesize("Ready.", voice, format="wav", seed=0)
            self.self_test = {"ok": True, "voice": voice, "seconds": round(time.perf_counter() - started, 3),
                              "rtf": reply.header.get("rtf")}
            log.info("self-test passed %s", kv(voice=voice, seconds=self.self_test["seconds"]))
        except (ClientError, zmq.ZMQError) as exc:
            self.self_test = {"ok": False, "voice": voice, "detail": str(exc)}
            self.service.degrade("self_test", f"a synthesize request to ourselves failed: {exc}")

    def _announce_stop(self) -> None:
        self.notifier.stopping()
        self.service.set("stopping")
        log.info("stopping: finishing the running request")

    def _shutdown(self) -> bool:
        """Drain, cancel what still runs, close; True when the synthesis worker has ended."""
        worker_stopped = True
        if self.server is not None:
            self.server.drain(self.settings.server.drain_timeout_s, CANCEL_GRACE_S)
            worker_stopped = self.server.close()
        self._on_stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("stopped")
        return worker_stopped

    def _on_stop(self) -> None:
        if self.textfile is not None:
            self.textfile.stop()  # no figures left behind that look current
        if self.sampler is not None:
            self.sampler.stop()
        if self.hub is not None:
            self.hub.close()
        if self.publisher is not None:
            self.publisher.close()
        if self.settings.hardware.enabled and self.settings.hardware.restore_at_stop and self.hwctl is not None:
            try:
                self.hwctl.restore()
                log.info("clocks restored at stop")
            except Exception as exc:
                log.warning("clocks not restored at stop %s", kv(reason=str(exc)))


def serve(config_path: str | None) -> int:
    from .logs import setup_logging

    settings = load_settings(config_path)
    setup_logging(settings.log.level)
    log.info("starting %s", kv(version=__version__, config=settings.source_file or "(defaults)", pid=os.getpid()))
    for old, new in settings.deprecated_keys():
        log.warning("config key renamed: the old name still works, for now %s", kv(old=old, new=new))
    return Daemon(settings).run()
