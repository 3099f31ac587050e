#!/usr/bin/env python3
"""Measure the engine: warm-up time, guided DiT step time per length bucket, end-to-end RTF.

    python scripts/bench_engine.py [--config /etc/ishowtts-edge/ishowtts-edge.toml] [--runs 5]

Without --config it runs the demo checkpoint (only useful on CPU as a smoke test).
The per-step figure is one guided forward (cond + uncond as one batch of 2) at each
bucket length, the number to compare with the ~5 ms target at 855 frames on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ishowtts_edge.config import load_settings  # noqa: E402
from ishowtts_edge.engine.core import Engine  # noqa: E402
from ishowtts_edge.logs import setup_logging  # noqa: E402
from ishowtts_edge.protocol import SynthesizeParams  # noqa: E402

TEXTS = [
    "Hello, this is a short sentence.",
    "The quick brown fox jumps over the lazy dog, and then it runs back into the forest to rest.",
    "A longer paragraph follows. It has several sentences, each of them ordinary. "
    "Together they make the engine split the text into chunks and cross-fade them.",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def step_times(engine: Engine, lengths: list[int], iterations: int) -> dict[int, float]:
    """Median ms of one guided forward at each length (the compiled one where it applies)."""
    sampler, device, dtype = engine.sampler, engine.device, engine.dtype
    tr = sampler.transformer
    out = {}
    for length in lengths:
        x = torch.randn(1, length, 100, device=device, dtype=dtype)
        cond = torch.randn(1, length, 100, device=device, dtype=dtype)
        text = torch.randint(0, 2000, (1, length // 6), device=device)
        text_cond = tr.text_embed(text, seq_len=length)
        text_uncond = tr.text_embed(text, seq_len=length, drop_text=True)
        mask = torch.ones(1, length, dtype=torch.bool, device=device) if sampler.buckets else None
        forward = sampler._forward if length in sampler.buckets or not sampler.buckets else sampler._guided_dit
        t = torch.tensor(0.5, device=device, dtype=dtype)
        forward(x, cond, text_cond, text_uncond, t, mask)
        samples = []
        for _ in range(iterations):
            _sync(device)
            started = time.perf_counter()
            forward(x, cond, text_cond, text_uncond, t, mask)
            _sync(device)
            samples.append((time.perf_counter() - started) * 1000)
        out[length] = statistics.median(samples)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--lengths", type=int, nargs="*", help="frame lengths for the step benchmark (default: buckets + 855)")
    args = parser.parse_args()
    setup_logging("info")
    settings = load_settings(args.config) if args.config else load_settings(None)
    engine = Engine(settings)
    started = time.perf_counter()
    engine.load(lambda m: print(f"load: {m}", file=sys.stderr))
    print(f"load_s={time.perf_counter() - started:.1f}")
    report = engine.warmup(lambda m: print(f"warmup: {m}", file=sys.stderr))
    print(f"warmup_s={report.seconds:.1f} compiled={report.compiled} shapes={report.shapes} error={report.error}")

    lengths = args.lengths or sorted(set(engine.sampler.buckets) | {855})
    for length, ms in step_times(engine, lengths, args.iterations).items():
        print(f"guided_step frames={length} batch=2 ms={ms:.2f}")

    for text in TEXTS:
        rtfs = []
        for run in range(args.runs):
            result = engine.synthesize(SynthesizeParams(text=text, seed=run))
            rtfs.append(result.rtf)
        print(
            f"rtf chars={len(text)} chunks={result.chunks} frames={result.mel_frames} "
            f"median={statistics.median(rtfs):.4f} min={min(rtfs):.4f} max={max(rtfs):.4f}"
        )
    print(json.dumps(engine.describe(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
