#!/usr/bin/env python3
"""One engine configuration, measured in-process: the A/B tool behind docs/benchmarks.md's probe rows.

`ishowtts-edge bench` compares upstream, the engine and the daemon at the configured defaults;
this script answers "what does changing one engine setting do": run it once per
variant (each in a fresh process, each with an empty compile cache) and compare the
JSON.  It reports the warm-up (compile + graph capture) time, the first request after
warm-up against the steady state, steady RTF median/CV, recompilations, peak GPU
memory and, with --new-lengths, what a text length the engine has not seen costs on
its first request and in the vocoder alone.

    # compile scope A/B on two buckets, NFE 7 graphs only (as in docs/benchmarks.md):
    python scripts/engine_ab.py --tag blocks --scope blocks --buckets 896,1024 --graph-nfe none --json out/blocks.json
    python scripts/engine_ab.py --tag model  --scope model  --buckets 896,1024 --graph-nfe none --json out/model.json
    # the default configuration, with the new-length probe:
    python scripts/engine_ab.py --tag default --new-lengths --json out/default.json
    # CPU smoke run (tests/test_bench_smoke.py): tiny demo model, eager
    python scripts/engine_ab.py --device cpu --model demo --runs 2 --json out/cpu.json

Weights are random (the bench's checkpoint cache under --work-dir); timings depend on
the machine and are for reports, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ishowtts_edge.bench.report import write_json  # noqa: E402  (after the path insert)
from ishowtts_edge.bench.stats import summarize  # noqa: E402

SENTENCE = "The quick brown fox jumps over a lazy dog."
NEW_TEXTS = (
    "Hello there, friend.",
    "Another sentence never seen before, with new words.",
    "Short one.",
    "We should probably get going before the rain starts again tonight.",
    "A brand new line of text for the vocoder to see for the very first time, okay?",
)
REF_TEXT = "Some call me nature, others call me mother nature."
ENGINE_KEYS = ("dtype", "compiled", "compile_mode", "compile_scope", "attention", "attention_note", "buckets")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tag", default="run", help="a name for this variant in the output")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--model", default="full", choices=["full", "demo"], help="F5TTS_v1_Base or the tiny demo arch")
    ap.add_argument("--scope", default=None, choices=["blocks", "model"], help="engine.compile_scope")
    ap.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="engine.dtype")
    ap.add_argument("--attention", default=None, choices=["sdpa", "flash"], help="engine.attention")
    ap.add_argument("--compile-mode", default=None, help="engine.compile_mode")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--buckets", default=None, help="comma list for engine.length_buckets (default: the engine's)")
    ap.add_argument("--graph-nfe", default=None, help="comma list for engine.cuda_graph_nfe, or 'none'")
    ap.add_argument("--eager-vocoder", action="store_true",
                    help="drop the vocoder's CUDA graphs after warm-up (the eager vocoder with warmed FFT plans)")
    ap.add_argument("--daemon", action="store_true",
                    help="run the variant through the real daemon (child process, requests over ZeroMQ) instead of in-process")
    ap.add_argument("--config", type=Path, default=None,
                    help="with --daemon: serve this existing TOML (e.g. the bench's bench.toml) as it is, "
                         "instead of one written from the options above")
    ap.add_argument("--worker-thread", action="store_true",
                    help="in-process: load, warm up and synthesize on a second thread, as the daemon's worker does")
    ap.add_argument("--no-telemetry", action="store_true",
                    help="with --daemon: no telemetry sources and no RTF monitor in the daemon")
    ap.add_argument("--without", default="",
                    help="comma list of the padded path's rewrites to switch off (engine.sampler.FAST_PATH_PARTS: "
                         "fused_qkv, time_once): what each one is worth, left out one at a time")
    ap.add_argument("--runs", type=int, default=20, help="steady-state requests after the first")
    ap.add_argument("--new-lengths", action="store_true", help="also time first vs second request at unseen lengths")
    ap.add_argument("--profile", action="store_true",
                    help="after the steady runs, one sentence and its vocoder alone under torch.profiler: "
                         "GPU busy time, idle gaps and the kernels that take it (in-process only)")
    ap.add_argument("--sweep", default=None,
                    help="comma list of text lengths (characters, the bench's sweep texts): the steady cost of "
                         "each, one chunk each, with the bucket it ran in (what one pass costs by length)")
    ap.add_argument("--profile-chars", type=int, default=None,
                    help="with --profile: profile the sweep text of this many characters instead of the sentence")
    ap.add_argument("--work-dir", type=Path, default=REPO / ".cache" / "bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.daemon and (a.new_lengths or a.eager_vocoder or a.profile):
        ap.error("--new-lengths, --eager-vocoder and --profile are in-process measurements; not with --daemon")
    if a.worker_thread and a.daemon:
        ap.error("--worker-thread is an in-process option; the daemon always uses its worker thread")
    from ishowtts_edge.engine.sampler import FAST_PATH_PARTS

    unknown = {p for p in a.without.split(",") if p} - set(FAST_PATH_PARTS)
    if unknown:
        ap.error(f"--without: unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(FAST_PATH_PARTS)}")
    if a.without and a.daemon:
        ap.error("--without is an in-process option")
    if a.no_telemetry and not a.daemon:
        ap.error("--no-telemetry needs --daemon")
    if a.config is not None and (not a.daemon or engine_overrides(a) != {"device": a.device}):
        ap.error("--config needs --daemon and takes the engine settings from the file: no engine options with it")
    return a


def engine_overrides(a: argparse.Namespace) -> dict:
    out: dict = {"device": a.device}
    if a.scope:
        out["compile_scope"] = a.scope
    if a.dtype:
        out["dtype"] = a.dtype
    if a.attention:
        out["attention"] = a.attention
    if a.compile_mode:
        out["compile_mode"] = a.compile_mode
    if a.no_compile:
        out["compile"] = False
    if a.buckets:
        out["length_buckets"] = [int(x) for x in a.buckets.split(",")]
    if a.graph_nfe is not None:
        out["cuda_graph_nfe"] = [] if a.graph_nfe == "none" else [int(x) for x in a.graph_nfe.split(",")]
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    warnings.filterwarnings("ignore")
    # An empty compile cache per run, unless the caller set one: a cold warm-up is the figure.
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        os.environ.setdefault(var, tempfile.mkdtemp(prefix=f"engine-ab-{var.split('_')[0].lower()}-"))
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("engine_ab: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    import f5_tts

    from ishowtts_edge.config import EngineConfig, PathsConfig, Settings, VoiceConfig
    from ishowtts_edge.engine.checkpoint import VocosConfig, read_arch
    from ishowtts_edge.engine.loader import load_engine
    from ishowtts_edge.engine.demo import write_demo_bundle
    from ishowtts_edge.engine.sampler import compile_counters
    from ishowtts_edge.logs import setup_logging
    from ishowtts_edge.protocol import SynthesizeParams

    setup_logging("warning")
    if a.config is not None:
        from ishowtts_edge.config import load_settings

        settings = load_settings(a.config)
        return through_daemon(a, settings, Path(tempfile.mkdtemp(prefix="engine-ab-")), config=a.config)
    ref_audio = Path(list(f5_tts.__path__)[0]) / "infer/examples/basic/basic_ref_en.wav"
    if a.model == "full":
        bundle = write_demo_bundle(a.work_dir / "engine-ab" / f"full-seed{a.seed}", seed=a.seed,
                                   arch=read_arch("F5TTS_v1_Base"), vocos=VocosConfig())
    else:
        bundle = write_demo_bundle(a.work_dir / "engine-ab" / f"demo-seed{a.seed}", seed=a.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="engine-ab-"))
    settings = Settings(
        paths=PathsConfig(runtime_dir=run_dir / "run", state_dir=run_dir / "state", cache_dir=run_dir / "cache"),
        engine=EngineConfig(model=str(bundle.arch_path), checkpoint=bundle.checkpoint, vocab=bundle.vocab,
                            vocoder_dir=bundle.vocoder_dir, **engine_overrides(a)),
        voices={"ref": VoiceConfig(ref_audio=ref_audio, ref_text=REF_TEXT)},
        default_voice="ref",
    )
    if a.daemon:
        return through_daemon(a, settings, run_dir)
    cuda = a.device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if a.worker_thread:  # one long-lived second thread, as the daemon's synthesis worker
        from concurrent.futures import ThreadPoolExecutor

        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-ab-worker")

        def run(fn):
            return worker.submit(fn).result()
    else:
        def run(fn):
            return fn()
    from ishowtts_edge.engine import sampler as sampler_module

    for part in filter(None, a.without.split(",")):
        sampler_module.FAST_PATH_PARTS[part] = False
    engine = run(lambda: load_engine(settings))
    started = time.perf_counter()
    report = run(engine.warmup)
    if a.eager_vocoder:
        run(engine.vocoder.release_graphs)
        run(lambda: engine.vocoder.warm_fft_plans(max(engine.sampler.buckets or [2560])))
    clocks = gpu_clock_reader() if cuda else None
    out: dict = {
        "tag": a.tag, "argv": sys.argv[1:], "torch": torch.__version__, "worker_thread": a.worker_thread,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "engine": {k: engine.describe().get(k) for k in ENGINE_KEYS},
        "fast_path_parts": sorted(engine.sampler.parts),
        "warmup": {"seconds": round(time.perf_counter() - started, 2), "error": report.error,
                   "graphs_compiled": compile_counters()["graphs"], "vocoder_graphs": engine.vocoder.graphed_lengths},
    }

    def synth(text: str, seed: int):
        def call():
            sync()
            t = time.perf_counter()
            result = engine.synthesize(SynthesizeParams(text=text, seed=seed))
            return result, time.perf_counter() - t

        return run(call)

    first, wall = synth(SENTENCE, 0)
    rtfs, clock_rows = [], []
    for i in range(a.runs):
        rtfs.append(synth(SENTENCE, i + 1)[0].rtf)
        if clocks is not None:
            clock_rows.append(clocks())  # read after the request, outside its timing
    if clock_rows and all(clock_rows):
        out["gpu_clocks"] = clock_summary(clock_rows, rtfs)
    out["steady"] = summarize(rtfs)
    out["first_request"] = {"rtf": first.rtf, "wall_seconds": wall, "ratio": first.rtf / out["steady"]["median"]}
    if a.new_lengths:
        rows = []
        for k, text in enumerate(NEW_TEXTS):
            r1, _ = synth(text, 100 + k)
            r2, _ = synth(text, 200 + k)
            rows.append({"chars": len(text), "frames": r1.mel_frames, "first_ms": r1.synthesis_seconds * 1e3,
                         "second_ms": r2.synthesis_seconds * 1e3})
        out["new_lengths"] = rows
        vocoder = []
        n_mels = engine.model.num_channels
        for frames in (301, 517, 733, 1001):
            mel = torch.randn(1, n_mels, frames, device=engine.device)
            times = []
            for _ in range(2):
                sync()
                t = time.perf_counter()
                engine._vocode(mel)
                sync()
                times.append((time.perf_counter() - t) * 1e3)
            vocoder.append({"frames": frames, "first_ms": times[0], "second_ms": times[1]})
        out["vocoder_new_length"] = vocoder
    if a.sweep:
        from ishowtts_edge.bench.texts import sweep_text

        rows = []
        for chars in (int(x) for x in a.sweep.split(",")):
            text = sweep_text(chars)
            results = [synth(text, 300 + i) for i in range(max(a.runs // 2, 3) + 1)][1:]
            times = [wall for _, wall in results]
            r = results[0][0]
            rows.append({"chars": chars, "chunks": r.chunks, "frames": r.mel_frames, "model_frames": r.model_frames,
                         "ms": summarize([t * 1e3 for t in times])})
        out["sweep"] = rows
    if a.profile:
        from ishowtts_edge.bench.texts import sweep_text

        profiled = sweep_text(a.profile_chars) if a.profile_chars else SENTENCE
        mel = torch.randn(1, engine.model.num_channels, first.mel_frames, device=engine.device)
        out["profile"] = {
            "sentence" if not a.profile_chars else f"{a.profile_chars} chars":
                run(lambda: profile_call(lambda: engine.synthesize(SynthesizeParams(text=profiled, seed=0)), sync)),
            "vocoder": run(lambda: profile_call(lambda: engine._vocode(mel), sync)),
        }
    out["recompiles_since_ready"] = engine.describe()["recompiles_since_ready"]
    out["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    steady = out["steady"]
    print(f"{a.tag}: attention {out['engine']['attention']}, warm-up {out['warmup']['seconds']} s ({out['warmup']['graphs_compiled']} graphs), "
          f"steady RTF {steady['median']:.4f} (CV {steady['cv']:.1%}, min {steady['min']:.4f}, max {steady['max']:.4f}), "
          f"first {first.rtf:.4f} ({out['first_request']['ratio']:.2f}x), recompiles {out['recompiles_since_ready']}, "
          f"padded-path parts {','.join(out['fast_path_parts']) or '-'}")
    if "gpu_clocks" in out:
        g = out["gpu_clocks"]
        print(f"  GPU SM clock after each run: {g['sm_mhz_min']}-{g['sm_mhz_max']} MHz, "
              f"correlation with RTF {g['rtf_sm_correlation']}, throttle reasons seen {g['throttle_reasons_seen']}")
    for row in out.get("new_lengths", []):
        print(f"  new length {row['chars']} chars / {row['frames']} frames: first {row['first_ms']:.1f} ms, "
              f"second {row['second_ms']:.1f} ms")
    for row in out.get("sweep", []):
        print(f"  {row['chars']} chars, {row['chunks']} chunk(s), {row['frames']} frames generated in "
              f"{row['model_frames']} model frames: median {row['ms']['median']:.2f} ms (CV {row['ms']['cv']:.1%})")
    for row in out.get("vocoder_new_length", []):
        print(f"  vocoder {row['frames']} frames: first {row['first_ms']:.1f} ms, second {row['second_ms']:.1f} ms")
    for name, prof in out.get("profile", {}).items():
        print_profile(name, prof)
    write_json(a.json, out)
    return 0


#: Kernel families by name, first match wins: where a step's GPU time goes.  cuDNN runs
#: convolutions on CUTLASS kernels too ("...fprop..."), and converts layouts around them.
KERNEL_FAMILIES = (
    ("inductor fused", ("triton",)),  # first: their names list the aten ops fused, attention's included
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("conv", ("conv", "fprop", "nchwtonhwc", "nhwctonchw", "winograd")),
    ("matmul", ("gemm", "cutlass", "cublas", "xmma", "sm90_", "sm80_", "nvjet", "matmul")),
    ("fft", ("fft",)),
)


def kernel_family(name: str) -> str:
    low = name.lower()
    for family, keys in KERNEL_FAMILIES:
        if any(k in low for k in keys):
            return family
    return "other"


def profile_call(fn, sync) -> dict:
    """One call under torch.profiler: wall time, GPU busy time (union of kernel intervals), idle
    gaps, and kernel time by family and by name.  On a CPU run: the top operators by self time.

    Inside CUDA graph replays the profiler's kernel spans overlap, so per-kernel sums can
    exceed the busy time: read them as shares, and time a suspect kernel on its own before
    acting on it (docs/benchmarks.md, "Alternatives measured": the position-embedding conv).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync()
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        fn()
        sync()
        wall_us = (time.perf_counter() - t) * 1e6
    events = list(prof.events())
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list[float]] = {}
    if kernels:
        spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
        busy, gaps, cur_start, cur_end = 0.0, [], spans[0][0], spans[0][1]
        for start, end in spans[1:]:
            if start > cur_end:
                busy += cur_end - cur_start
                gaps.append(start - cur_end)
                cur_start, cur_end = start, end
            else:
                cur_end = max(cur_end, end)
        busy += cur_end - cur_start
        for e in kernels:
            by_name.setdefault(e.name, []).append(e.time_range.end - e.time_range.start)
        gpu = {"kernels": len(kernels), "busy_us": round(busy, 1), "span_us": round(spans[-1][1] - spans[0][0], 1),
               "gaps": len(gaps), "gaps_over_10us": sum(1 for g in gaps if g > 10),
               "gap_us_total": round(sum(gaps), 1), "largest_gap_us": round(max(gaps, default=0.0), 1)}
    else:
        for e in events:
            by_name.setdefault(e.name, []).append(e.self_cpu_time_total)
        gpu = None
    families: dict[str, float] = {}
    for name, times in by_name.items():
        family = kernel_family(name) if kernels else "cpu op"
        families[family] = families.get(family, 0.0) + sum(times)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:20]
    return {"wall_us": round(wall_us, 1), "gpu": gpu,
            "families_us": {k: round(v, 1) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
            "top": [{"name": name[:120], "calls": len(times), "total_us": round(sum(times), 1)} for name, times in top]}


def print_profile(label: str, prof: dict) -> None:
    gpu = prof["gpu"]
    if gpu:
        print(f"  profile {label}: wall {prof['wall_us'] / 1e3:.2f} ms, GPU busy {gpu['busy_us'] / 1e3:.2f} ms "
              f"over a {gpu['span_us'] / 1e3:.2f} ms span, {gpu['kernels']} kernels, {gpu['gaps']} gaps "
              f"({gpu['gaps_over_10us']} over 10 us, {gpu['gap_us_total'] / 1e3:.2f} ms in all, largest "
              f"{gpu['largest_gap_us']:.0f} us)")
    else:
        print(f"  profile {label}: wall {prof['wall_us'] / 1e3:.2f} ms (CPU run: operators by self time)")
    print("    by family: " + ", ".join(f"{k} {v / 1e3:.2f} ms" for k, v in prof["families_us"].items()))
    for row in prof["top"][:12]:
        print(f"    {row['total_us'] / 1e3:7.3f} ms {row['calls']:5d}x  {row['name'][:100]}")


def settings_toml(settings, telemetry: bool = True) -> str:
    """The TOML a daemon reads for ``settings``: paths, the engine fields this script sets, the voice."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string

    engine = settings.engine.model_dump(exclude_defaults=True)
    voice = settings.voices["ref"]
    lines = ['default_voice = "ref"', "", "[paths]"]
    lines += [f"{k} = {value(getattr(settings.paths, k))}" for k in ("runtime_dir", "state_dir", "cache_dir")]
    lines += ["", "[engine]"] + [f"{k} = {value(v)}" for k, v in engine.items()]
    # The engine is what is measured: no power-mode/clock management (the bench does the same).
    if not telemetry:
        lines += ["", "[telemetry]", "sources = []", "", "[monitor]", "enabled = false"]
    lines += ["", "[hardware]", "enabled = false", "", "[voices.ref]",
              f"ref_audio = {value(voice.ref_audio)}", f"ref_text = {value(voice.ref_text)}", ""]
    return "\n".join(lines)


def through_daemon(a: argparse.Namespace, settings, run_dir: Path, config: Path | None = None) -> int:
    """``ishowtts-edge serve`` on the variant's settings; the same requests as in-process, over ZeroMQ.

    This is the cross-check of the bench's daemon section: same engine settings, but
    started by a minimal parent (this one never initialises CUDA) and read from the reply
    headers' synthesis_seconds, so an in-process vs daemon difference can be pinned down.
    """
    from ishowtts_edge.bench.daemon_process import DaemonNotReady, DaemonProcess
    from ishowtts_edge.client import Client

    if config is None:
        config = run_dir / "daemon.toml"
        config.write_text(settings_toml(settings, telemetry=not a.no_telemetry), encoding="utf-8")
    voice = settings.default_voice
    daemon = DaemonProcess(settings.endpoint, run_dir / "daemon.log", config=config)
    try:
        try:
            daemon.wait_ready(timeout=3600.0)
        except DaemonNotReady as exc:
            print(f"engine_ab: {str(exc)[-3000:]}\nlog: {daemon.log_path}", file=sys.stderr)
            return 1
        ready = time.perf_counter() - daemon.started
        with Client(settings.endpoint, timeout_s=600.0, retries=0) as client:
            status = client.status()

            def synth(seed: int) -> tuple[dict, float]:
                t = time.perf_counter()
                reply = client.synthesize(SENTENCE, voice, format="f32le", seed=seed)
                return reply.header, time.perf_counter() - t

            first, first_wall = synth(0)
            rows = [synth(i + 1) for i in range(a.runs)]
            describe = client.status().get("engine") or {}
    finally:
        daemon.stop()
    rtfs = [h["rtf"] for h, _ in rows]
    overheads = [wall - h["synthesis_seconds"] for h, wall in rows]
    steady = summarize(rtfs)
    median = steady["median"]
    warm = status.get("warmup") or {}
    out = {
        "tag": a.tag, "argv": sys.argv[1:], "through": "daemon", "daemon_log": str(daemon.log_path),
        "config": str(config),
        "engine": {k: describe.get(k) for k in ENGINE_KEYS},
        "warmup": {"seconds": warm.get("seconds"), "error": warm.get("error"), "ready_seconds": round(ready, 2),
                   "vocoder_graphs": describe.get("vocoder_graphs")},
        "first_request": {"rtf": first["rtf"], "wall_seconds": first_wall, "ratio": first["rtf"] / median},
        "steady": steady,
        "overhead_ms_median": round(statistics.median(overheads) * 1e3, 3),
        "recompiles_since_ready": describe.get("recompiles_since_ready"),
    }
    print(f"{a.tag} (daemon, attention {out['engine']['attention']}): ready {ready:.1f} s (warm-up {warm.get('seconds')} s), steady RTF {median:.4f} "
          f"(CV {steady['cv']:.1%}, min {steady['min']:.4f}, max {steady['max']:.4f}), first {first['rtf']:.4f} "
          f"({out['first_request']['ratio']:.2f}x), overhead {out['overhead_ms_median']} ms, "
          f"recompiles {out['recompiles_since_ready']}")
    write_json(a.json, out)
    return 0


def gpu_clock_reader():
    """A function returning (GPU MHz, memory MHz, power W, throttle tags) after a run, or None without a source.

    The daemon's own telemetry sources, read directly: a Jetson's sysfs devfreq, else NVML.
    """
    from ishowtts_edge.telemetry import open_direct_source

    source = open_direct_source()
    if source is None:  # CPU-only machine
        return None

    def read():
        try:
            sample = source.read()
        except Exception:  # the source went away mid-run: that row is None
            return None
        power_w = sample.power_mw / 1000.0 if sample.power_mw is not None else None
        return sample.gpu_cur_mhz, sample.emc_cur_mhz, power_w, list(sample.throttle)

    return read


def clock_summary(rows: list[tuple], rtfs: list[float]) -> dict:
    sm = [r[0] for r in rows]
    corr = None
    if None not in sm and len(set(sm)) > 1 and len(set(rtfs)) > 1:
        corr = round(statistics.correlation(sm, rtfs), 3)
    known = [v for v in sm if v is not None]
    power = [r[2] for r in rows if r[2] is not None]
    return {"sm_mhz_min": min(known, default=None), "sm_mhz_max": max(known, default=None),
            "mem_mhz": sorted({r[1] for r in rows if r[1] is not None}),
            "power_w_median": round(statistics.median(power), 1) if power else None,
            "rtf_sm_correlation": corr, "throttle_reasons_seen": sorted({t for r in rows for t in r[3]}),
            "rows": [list(r) for r in rows]}


if __name__ == "__main__":
    sys.exit(main())
