"""``ishowtts-edge bench``: its options and one run (upstream, engine, daemon cold, daemon warm).

Nothing is downloaded: the checkpoints are random weights written, seeded, through the
engine's own save path and cached in ``--work-dir``; the reference is f5-tts's example.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .texts import FIRST_TEXT, REF_TEXT, SWEEP_LENGTHS, TEXT_GROUPS, TEXTS, TTFA_TEXT

SECTIONS = ("upstream", "engine", "daemon")


def default_work_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ishowtts-edge" / "bench"


def parse_list(value: str, cast: Callable[[str], Any]) -> list[Any]:
    items = [cast(v.strip()) for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def parse_texts(value: str) -> list[str]:
    names: list[str] = []
    for item in parse_list(value, str):
        for name in TEXT_GROUPS.get(item, [item]):
            if name not in TEXTS:
                raise argparse.ArgumentTypeError(
                    f"unknown text {name!r} (known: {', '.join([*TEXTS, *TEXT_GROUPS])})"
                )
            if name not in names:
                names.append(name)
    return names


def parse_sections(value: str) -> list[str]:
    sections = parse_list(value, str)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    return sections


def parse_nfe(value: str) -> list[int]:
    try:
        steps = parse_list(value, int)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: want comma-separated integers") from None
    if any(not 1 <= s <= 64 for s in steps):
        raise argparse.ArgumentTypeError("every NFE must be between 1 and 64")
    return steps


def parse_sweep_lengths(value: str) -> list[int]:
    if value.strip().lower() == "none":
        return []
    try:
        lengths = parse_list(value, int)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: want comma-separated integers or 'none'") from None
    if any(not 1 <= n <= 1000 for n in lengths):
        raise argparse.ArgumentTypeError("every sweep length must be between 1 and 1000 characters")
    return sorted(set(lengths))


def parse_idle_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: want a number of seconds") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError("--idle-seconds must be between 0 and 3600")
    return seconds


def count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r}: want a whole number") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return number

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench's options, on the ``bench`` sub-command's parser."""
    p.description = ("Upstream F5TTS.infer (with the bench extra), the ishowtts-edge engine in-process and the "
                     "daemon over ZeroMQ, side by side on random weights (docs/benchmarks.md).")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--model", choices=["full", "demo"], default="full",
                   help="full = F5TTS_v1_Base (337 M) + full Vocos; demo = the tiny demo arch (CPU smoke run)")
    p.add_argument("--runs", type=count(1), default=20,
                   help="timed runs per (side, NFE, text) after warm-up (default 20)")
    p.add_argument("--warmup", type=count(0), default=2, help="untimed runs per series before timing (default 2)")
    p.add_argument("--texts", type=parse_texts, default=list(TEXTS),
                   help=f"comma list of {', '.join(TEXTS)} or a group ({', '.join(TEXT_GROUPS)}); default all")
    p.add_argument("--nfe", type=parse_nfe, default=[7, 32], help="our NFEs (engine, daemon); default 7,32")
    p.add_argument("--upstream-nfe", type=parse_nfe, default=[32, 7], help="upstream's NFEs; default 32,7")
    p.add_argument("--skip", type=parse_sections, default=[],
                   help=f"comma list of sections to leave out: {', '.join(SECTIONS)}")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="random-weight checkpoints (reused), daemon logs, config "
                        "(default $XDG_CACHE_HOME/ishowtts-edge/bench, i.e. ~/.cache/ishowtts-edge/bench)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="compile caches (TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR live in its subdirectories, "
                        "emptied at start so the first daemon start is cold); default <work-dir>/compile-cache")
    p.add_argument("--keep-compile-cache", action="store_true",
                   help="do not empty the compile caches at start: no start is cold (e.g. when one run is split "
                        "over several invocations with --skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--step-frames", type=count(1), default=855,
                   help="sequence length of the single guided-DiT-step timing (default 855: the sentence with "
                        "the reference)")
    p.add_argument("--step-iterations", type=count(1), default=None,
                   help="timed calls of that step (default max(--runs, 20))")
    p.add_argument("--sweep-lengths", type=parse_sweep_lengths, default=list(SWEEP_LENGTHS),
                   help="text lengths (characters) synthesized once each after the timed series of the engine and "
                        "of each daemon start, to count recompilations; 'none' skips the sweep (default "
                        f"{','.join(map(str, SWEEP_LENGTHS))})")
    p.add_argument("--idle-seconds", type=parse_idle_seconds, default=10.0,
                   help="after each daemon start's series, stay idle this long, then time one sentence request "
                        "against the steady state (0 skips; default 10)")
    p.add_argument("--ref-audio", type=Path, default=None, help="default: f5-tts's basic_ref_en.wav")
    p.add_argument("--ref-text", default=None, help=f"default: {REF_TEXT!r}")
    p.add_argument("--no-compile", action="store_true", help="engine.compile = false (eager everywhere)")
    p.add_argument("--compile-mode", default=None, help="override engine.compile_mode")
    p.add_argument("--compile-backend", default=None, choices=["inductor", "eager", "aot_eager"],
                   help="override engine.compile_backend; eager traces with dynamo on the CPU too (smoke test)")
    p.add_argument("--daemon-hardware", action="store_true",
                   help="leave hardware management on in the daemon (needs hwctl; off by default)")
    p.add_argument("--daemon-timeout", type=float, default=3600.0, help="seconds to wait for READY (cold compile)")
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--no-cached-path", action="store_true",
                   help="use the placeholder cached_path module even when the real one is importable")
    p.add_argument("--upstream-from", type=Path, default=None,
                   help="take the upstream section from an earlier --json report (same device, model, reference) "
                        "instead of running it; for a run split over several invocations (marked in the report)")
    p.add_argument("--json", type=Path, default=None, help="write the machine-readable report here")


def run(args: argparse.Namespace) -> int:
    """One run: 0 when every section ran (or was skipped), 1 when one failed, 2 when it cannot start."""
    import shutil
    import tempfile
    import time

    from .context import Context, compile_cache_env, empty_dir, ensure_checkpoint, machine_info, write_config
    from .daemon import run_daemon
    from .engine import run_engine
    from .measure import GpuClocks, log
    from .report import print_table, ratios, write_json
    from .upstream import UpstreamUnavailable, borrowed_upstream, install_cached_path_placeholder, run_upstream

    work_dir = (args.work_dir or default_work_dir()).resolve()
    cache_dir = (args.cache_dir or work_dir / "compile-cache").resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    # ISHOWTTS_EDGE_* variables outrank the TOML: left set, they would make the daemon and the
    # in-process engine measure something other than bench.toml says.
    overridden = sorted(k for k in os.environ if k.startswith("ISHOWTTS_EDGE_"))
    for key in overridden:
        del os.environ[key]
    if overridden:
        log(f"ignoring {', '.join(overridden)}: the bench configures the engine through its own bench.toml")
    # The in-process engine and the daemon each get their own, emptied compile cache: each first
    # compile is cold, and the daemon's second start finds the cache its first start wrote.
    for sub in ("inprocess", "daemon"):
        if args.keep_compile_cache:
            (cache_dir / sub).mkdir(parents=True, exist_ok=True)
        else:
            empty_dir(cache_dir / sub)
    os.environ.update(compile_cache_env(cache_dir / "inprocess"))  # before torch is imported

    cached_path_mode = install_cached_path_placeholder(args.no_cached_path)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"

    from ishowtts_edge.engine.upstream import f5_tts_root

    ref_audio = (args.ref_audio or f5_tts_root() / "infer" / "examples" / "basic" / "basic_ref_en.wav").resolve()
    ref_text = args.ref_text or REF_TEXT
    if not ref_audio.is_file():
        print(f"bench: reference audio {ref_audio} not found", file=sys.stderr)
        return 2
    import soundfile as sf

    ref_info = sf.info(str(ref_audio))
    runtime_dir = Path(tempfile.mkdtemp(prefix="ishowtts-bench-"))  # short: ipc paths are limited to ~107 bytes
    ctx = Context(
        torch=torch, device=device, texts=args.texts, nfe=args.nfe, upstream_nfe=args.upstream_nfe,
        runs=args.runs, warmup=args.warmup, work_dir=work_dir, cache_dir=cache_dir, runtime_dir=runtime_dir,
        config_path=work_dir / "bench.toml", ref_audio=ref_audio, ref_text=ref_text,
        compile=not args.no_compile, compile_mode=args.compile_mode,
        compile_backend=args.compile_backend, daemon_hardware=args.daemon_hardware,
        daemon_timeout=args.daemon_timeout, request_timeout=args.request_timeout,
        keep_compile_cache=args.keep_compile_cache, step_frames=args.step_frames,
        step_iterations=args.step_iterations or max(args.runs, 20),
        sweep_lengths=args.sweep_lengths, idle_seconds=args.idle_seconds,
        clocks=GpuClocks.open(device),
    )
    report: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(torch, device),
            "device": device,
            "model": args.model,
            "runs": args.runs,
            "warmup": args.warmup,
            "nfe": args.nfe,
            "upstream_nfe": args.upstream_nfe,
            "texts": {name: TEXTS[name] for name in args.texts},
            "ttfa_text": TTFA_TEXT,
            "step_frames": args.step_frames,
            "first_request_text": FIRST_TEXT,
            "sweep_lengths": args.sweep_lengths,
            "idle_seconds": args.idle_seconds,
            "reference": {"path": str(ref_audio), "text": ref_text, "seconds": ref_info.frames / ref_info.samplerate},
            "cached_path": cached_path_mode,
            "compile": ctx.compile,
            "compile_mode": ctx.compile_mode,
            "compile_backend": ctx.compile_backend,
            "cache_dir": str(cache_dir),
            "compile_cache_emptied": not args.keep_compile_cache,
            # where each row's gpu_clock comes from (None: no clock source, e.g. a CPU run)
            "gpu_clock_source": ctx.clocks.source.name if ctx.clocks is not None else None,
            "argv": sys.argv[1:],
        },
        "sections": {},
    }
    failed: list[str] = []
    try:
        ctx.bundle, ctx.checkpoint_info = ensure_checkpoint(work_dir / "checkpoints", args.model, args.seed)
        if args.upstream_from is not None:
            report["sections"]["upstream"] = borrowed_upstream(args.upstream_from, report["meta"], ctx.checkpoint_info)
        report["checkpoint"] = ctx.checkpoint_info
        write_config(ctx, ctx.config_path, runtime_dir, work_dir / "daemon-state")
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("upstream", lambda: run_upstream(ctx)),
            ("engine", lambda: run_engine(ctx)),
            ("daemon.cold", lambda: run_daemon(ctx, "cold", full=True)),
            ("daemon.warm", lambda: run_daemon(ctx, "warm", full=False)),
        ]
        for name, step in steps:
            if name.split(".")[0] in args.skip or (name == "upstream" and args.upstream_from is not None):
                continue
            log(f"section {name}")
            try:
                result = step()
            except UpstreamUnavailable as exc:
                log(f"  upstream skipped: {exc}")
                result = {"skipped": str(exc)}
            except Exception as exc:  # one broken side must not hide the others' figures
                import traceback

                traceback.print_exc()
                result = {"error": f"{type(exc).__name__}: {exc}"}
                failed.append(name)
            if "." in name:
                top, sub = name.split(".")
                report["sections"].setdefault(top, {})[sub] = result
            else:
                report["sections"][name] = result
        report["ratios"] = ratios(report["sections"])
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    report["failed"] = failed
    report["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(args.json, report)
    if args.json:
        log(f"wrote {args.json}")
    print_table(report)
    return 1 if failed else 0
