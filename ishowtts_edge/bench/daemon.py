"""The daemon section: ``ishowtts-edge serve`` as a child process on bench.toml, driven over ZeroMQ.

Started twice per run: cold (an emptied compile cache) and warm (the cache the cold
start wrote).  Also the transport floor: a bare REQ/REP round trip on this machine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .context import Context, compile_cache_env
from .daemon_process import DaemonProcess
from .measure import Sample, SynthFn, find_row, length_sweep, log, measure, steady_figures
from .stats import safe_ratio, series_medians, summarize
from .texts import FIRST_TEXT, TEXTS, TTFA_TEXT, VOICE_ID, long_text

# A bare REP server in its own process: busy for the given seconds (as a GPU wait spins), then one reply of
# a fixed size.  argv: endpoint, reply bytes.
FLOOR_SERVER = r"""
import sys, time, zmq
endpoint, size = sys.argv[1], int(sys.argv[2])
sock = zmq.Context().socket(zmq.REP)
sock.bind(endpoint)
payload = b"\x01" * size
print("ready", flush=True)
while True:
    frames = sock.recv_multipart()
    if frames[0] == b"quit":
        sock.send(b"")
        break
    end = time.perf_counter() + float(frames[0])
    while time.perf_counter() < end:
        pass
    sock.send_multipart([b'{"ok": true}', payload], copy=False)
"""


def transport_floor(runtime_dir: Path, reply_bytes: int, wait_seconds: float, runs: int) -> dict[str, Any]:
    """What a bare ZeroMQ REQ/REP round trip costs on this machine, minus the server's busy time.

    Same transport (ipc), the daemon's reply size and its synthesis time as the wait: the
    floor under the daemon's overhead figure (docs/benchmarks.md, "Known limits").
    """
    import zmq

    endpoint = f"ipc://{runtime_dir / 'floor.sock'}"
    server = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, endpoint, str(reply_bytes)],
                              stdout=subprocess.PIPE, text=True)
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"floor server did not start (exit {server.poll()})")
        sock.connect(endpoint)
        request = [repr(wait_seconds).encode(), b'{"op": "synthesize"}']
        samples = []
        for i in range(runs + 2):  # two untimed, as the series
            started = time.perf_counter()
            sock.send_multipart(request)
            if not sock.poll(int(1000 * (wait_seconds + 10))):
                raise RuntimeError("floor server did not reply")
            frames = sock.recv_multipart()
            elapsed = time.perf_counter() - started - wait_seconds
            if len(frames[1]) != reply_bytes:
                raise RuntimeError(f"floor reply of {len(frames[1])} bytes, expected {reply_bytes}")
            if i >= 2:
                samples.append(elapsed)
        sock.send(b"quit")
        sock.poll(2000)
    finally:
        sock.close()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()
    return {"reply_bytes": reply_bytes, "wait_seconds": wait_seconds, "seconds": summarize(samples)}


def nvml_process_memory(pid: int) -> int | None:
    """GPU memory NVML charges to ``pid`` now (after the runs); None where NVML is absent (Jetson)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        return int(proc.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no permission, or the Jetson's iGPU
        return None
    return None


def streamed_vs_whole(client: Any, ctx: Context) -> list[dict[str, Any]]:
    """Per text: time to the first audio chunk of a stream against the whole reply's round trip,
    and the stream's total time against it (same seed, each plan's default)."""
    texts = {name: TEXTS[name] for name in ctx.texts}
    if "paragraph" in texts:
        texts["long"] = long_text()
    rows = []
    for name, text in texts.items():
        first, total, whole = [], [], []
        for run in range(ctx.warmup + ctx.runs):
            started = time.perf_counter()
            ttfa = None
            for _ in client.stream(text, VOICE_ID, format="f32le", nfe_step=ctx.nfe[0], seed=run):
                if ttfa is None:
                    ttfa = time.perf_counter() - started
            streamed = time.perf_counter() - started
            started = time.perf_counter()
            client.synthesize(text, VOICE_ID, format="f32le", nfe_step=ctx.nfe[0], seed=run)
            if run >= ctx.warmup:
                first.append(ttfa if ttfa is not None else streamed)
                total.append(streamed)
                whole.append(time.perf_counter() - started)
        row = {"text": name, "chars": len(text), "nfe": ctx.nfe[0], "ttfa_seconds": summarize(first),
               "stream_seconds": summarize(total), "whole_seconds": summarize(whole)}
        row["ttfa_ratio"] = safe_ratio(row["ttfa_seconds"]["median"], row["whole_seconds"]["median"])
        row["total_ratio"] = safe_ratio(row["stream_seconds"]["median"], row["whole_seconds"]["median"])
        log(f"daemon stream {name}: TTFA median {row['ttfa_seconds']['median']:.4f} s, stream "
            f"{row['stream_seconds']['median']:.4f} s, whole {row['whole_seconds']['median']:.4f} s")
        rows.append(row)
    return rows


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def run_daemon(ctx: Context, label: str, full: bool) -> dict[str, Any]:
    """Start, wait for READY, time the first request, then (``full``) every text and NFE."""
    from ishowtts_edge.client import Client

    daemon = DaemonProcess(f"ipc://{ctx.runtime_dir / 'tts.sock'}", ctx.work_dir / f"daemon-{label}.log",
                           config=ctx.config_path, env=compile_cache_env(ctx.cache_dir / "daemon"), cwd=ctx.work_dir)
    section: dict[str, Any] = {
        "log": str(daemon.log_path),
        "results": [],
        "compile_cache": "kept from earlier runs" if ctx.keep_compile_cache and label == "cold" else
        ("written by the cold start" if label == "warm" else "empty (emptied at start)"),
    }
    try:
        daemon.wait_ready(ctx.daemon_timeout)
        section["ready_seconds"] = time.perf_counter() - daemon.started
        with Client(daemon.endpoint, timeout_s=ctx.request_timeout, retries=0) as client:
            status = client.status()
            engine_up = (status.get("engine") or {}).get("loaded") and not status.get("engine_error")
            if not engine_up:
                raise RuntimeError(
                    f"daemon is {status.get('state')} without an engine: {status.get('engine_error')}\n{daemon.log()}"
                )
            # "degraded" for reasons other than the engine (no telemetry source, no hwctl)
            # still serves; the reasons are kept with the figures.
            section["state"] = status.get("state")
            section["degraded"] = status.get("degraded") or {}
            warm = status.get("warmup") or {}
            section["warmup"] = {k: warm.get(k) for k in ("seconds", "compiled", "shapes", "error")}
            ready_describe = status.get("engine") or {}

            def synth_fn(text: str, nfe: int | None) -> Callable[[int], Sample]:
                def synth(seed: int) -> Sample:
                    t = time.perf_counter()
                    reply = client.synthesize(text, VOICE_ID, format="f32le", nfe_step=nfe, seed=seed)
                    wall = time.perf_counter() - t
                    h = reply.header
                    return Sample(float(h["synthesis_seconds"]), float(h["audio_seconds"]), wall, h.get("chunks"),
                                  mel_frames=h.get("mel_frames"), nfe=h.get("nfe_step"),
                                  server_seconds=optional_float(h.get("server_seconds")),
                                  queue_seconds=optional_float(h.get("queue_seconds")))

                return synth

            first = synth_fn(TEXTS[FIRST_TEXT], None)(0)
            section["first_request"] = {
                "text": FIRST_TEXT,
                "seconds": first.seconds,
                "roundtrip_seconds": first.wall_seconds,
                "audio_seconds": first.audio_seconds,
                "rtf": first.seconds / first.audio_seconds,
            }
            if full:
                for nfe in ctx.nfe:
                    for name in ctx.texts:
                        row = measure(f"daemon {label} nfe {nfe} {name}", synth_fn(TEXTS[name], nfe),
                                      ctx.warmup, ctx.runs, breakdown=True, clocks=ctx.clocks)
                        section["results"].append({"nfe": nfe, "text": name, **row})
            ttfa = find_row(section["results"], ctx.nfe[0], TTFA_TEXT)
            if ttfa is None:
                ttfa = measure(f"daemon {label} ttfa nfe {ctx.nfe[0]} {TTFA_TEXT}",
                               synth_fn(TEXTS[TTFA_TEXT], ctx.nfe[0]), ctx.warmup, ctx.runs, breakdown=True, clocks=ctx.clocks)
            section["time_to_first_audio"] = {"text": TTFA_TEXT, "nfe": ctx.nfe[0], "seconds": ttfa["wall_seconds"]}
            if full:
                section["streaming"] = streamed_vs_whole(client, ctx)
            series = section["results"] or [{"nfe": ctx.nfe[0], "text": TTFA_TEXT, **ttfa}]
            # ZeroMQ round trip minus the engine's synthesis_seconds, and its two parts (None from a
            # daemon whose replies carry no server_seconds)
            for key in ("overhead_seconds", "transport_seconds", "daemon_seconds"):
                section[key] = series_medians(series, key)
            section["transport_floor"] = None
            if full:
                # The overhead's floor: a bare REQ/REP with the sentence's reply (f32) after its synthesis time.
                row = find_row(section["results"], ctx.nfe[0], FIRST_TEXT) or series[0]
                rate = int(ready_describe.get("sample_rate") or 24000)
                try:
                    section["transport_floor"] = {
                        "nfe": row["nfe"], "text": row["text"],
                        **transport_floor(ctx.runtime_dir, int(round(row["audio_seconds"] * rate)) * 4,
                                          row["synthesis_seconds"]["median"], ctx.runs),
                    }
                except Exception as exc:  # a missing floor must not cost the daemon's figures
                    section["transport_floor"] = {"error": f"{type(exc).__name__}: {exc}"}
            default_nfe = first.nfe or ready_describe.get("nfe_step") or ctx.nfe[0]
            steady = steady_figures(f"daemon {label}", ctx, section["results"], default_nfe, synth_fn)
            section["steady"] = steady
            section["first_request"]["nfe"] = default_nfe
            first_row = section["first_request"]
            first_row["ratio"] = safe_ratio(first_row["rtf"], steady["rtf"]["median"])
            first_row["ratio_roundtrip"] = safe_ratio(first.wall_seconds, steady["wall_seconds"]["median"])
            if ctx.sweep_lengths:
                before_sweep = (client.status().get("engine") or {}).get("recompiles_since_ready")
                rows = length_sweep(f"daemon {label}", ctx.sweep_lengths, synth_fn)
                after_sweep = (client.status().get("engine") or {}).get("recompiles_since_ready")
                section["length_sweep"] = {
                    "lengths": rows,
                    "recompiles_after_ready": {"engine_describe": after_sweep, "before_sweep": before_sweep},
                }
            else:
                section["length_sweep"] = None
            section["after_idle"] = after_idle(ctx, label, synth_fn, steady) if ctx.idle_seconds > 0 else None
            # Read after the sweep and the idle probe, so they cover every request of this start.
            describe = client.status().get("engine") or {}
            section["describe"] = describe
            section["recompiles_after_ready"] = {
                "engine_describe": describe.get("recompiles_since_ready"),
                "at_ready": ready_describe.get("recompiles_since_ready"),
            }
            section["peak_rss_bytes"] = daemon.peak_rss_bytes()
            section["gpu_memory_used_bytes"] = nvml_process_memory(daemon.proc.pid) if ctx.device == "cuda" else None
    finally:
        section["exit_code"] = daemon.stop()
    return section


def after_idle(ctx: Context, label: str, synth_fn: SynthFn, steady: dict[str, Any]) -> dict[str, Any]:
    """One first-request-like call after ``--idle-seconds`` of silence, against the steady state.

    Tells a first-use cost in our code (only the first request after READY is slow) from the
    GPU lowering its clocks when idle (any request after a pause is slow).
    """
    log(f"  daemon {label}: idle {ctx.idle_seconds:g} s, then one {FIRST_TEXT} request")
    time.sleep(ctx.idle_seconds)
    s = synth_fn(TEXTS[FIRST_TEXT], None)(0)
    rtf = s.seconds / s.audio_seconds
    return {
        "idle_seconds": ctx.idle_seconds,
        "text": FIRST_TEXT,
        "nfe": s.nfe,
        "rtf": rtf,
        "roundtrip_seconds": s.wall_seconds,
        "steady_rtf": steady["rtf"]["median"],
        "steady_roundtrip_seconds": steady["wall_seconds"]["median"],
        "ratio": safe_ratio(rtf, steady["rtf"]["median"]),
        "ratio_roundtrip": safe_ratio(s.wall_seconds, steady["wall_seconds"]["median"]),
    }
