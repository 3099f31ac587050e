"""The engine section: an engine from ``ishowtts_edge.engine.loader.load_engine`` in the bench process, on the run's bench.toml."""

from __future__ import annotations

import time
from typing import Any, Callable

from .context import Context
from .measure import (Sample, count_params, counts_delta, dynamo_counts, find_row, free, last_figures, length_sweep, log,
                      measure, reset_peak, steady_figures, step_inputs, time_step)
from .stats import safe_ratio
from .texts import FIRST_TEXT, TEXTS, TTFA_TEXT, VOICE_ID


def run_engine(ctx: Context) -> dict[str, Any]:
    torch = ctx.torch
    from ishowtts_edge.config import load_settings
    from ishowtts_edge.engine.loader import load_engine
    from ishowtts_edge.protocol import SynthesizeParams

    settings = load_settings(ctx.config_path)
    reset_peak(torch, ctx.device)
    section: dict[str, Any] = {"results": []}
    t0 = time.perf_counter()
    engine = load_engine(settings, lambda message: log(f"  engine: {message}"))
    section["load_seconds"] = time.perf_counter() - t0
    section["params"] = count_params(engine.model)
    before = dynamo_counts()
    report = engine.warmup(lambda message: log(f"  engine: {message}"))
    section["warmup"] = {
        "seconds": report.seconds,
        "compiled": report.compiled,
        "shapes": list(report.shapes),
        "error": report.error,
        "compile_cache": "kept from earlier runs" if ctx.keep_compile_cache else "empty (emptied at start)",
        "dynamo": counts_delta(dynamo_counts(), before),
    }
    at_ready = dynamo_counts()

    def synth_fn(text: str, nfe: int | None) -> Callable[[int], Sample]:
        def synth(seed: int) -> Sample:
            t = time.perf_counter()
            result = engine.synthesize(SynthesizeParams(text=text, voice=VOICE_ID, nfe_step=nfe, seed=seed))
            wall = time.perf_counter() - t
            return Sample(result.synthesis_seconds, result.audio_seconds, wall, result.chunks,
                          mel_frames=result.mel_frames, nfe=result.nfe_step)

        return synth

    first = synth_fn(TEXTS[FIRST_TEXT], None)(0)
    section["first_request"] = {
        "text": FIRST_TEXT,
        "seconds": first.seconds,
        "wall_seconds": first.wall_seconds,  # includes what synthesis_seconds leaves out (voice preparation)
        "audio_seconds": first.audio_seconds,
        "rtf": first.seconds / first.audio_seconds,
    }
    for nfe in ctx.nfe:
        for name in ctx.texts:
            row = measure(f"engine nfe {nfe} {name}", synth_fn(TEXTS[name], nfe), ctx.warmup, ctx.runs, clocks=ctx.clocks)
            section["results"].append({"nfe": nfe, "text": name, **row})
    ttfa = find_row(section["results"], ctx.nfe[0], TTFA_TEXT)
    if ttfa is None:
        ttfa = measure(f"engine ttfa nfe {ctx.nfe[0]} {TTFA_TEXT}", synth_fn(TEXTS[TTFA_TEXT], ctx.nfe[0]),
                       ctx.warmup, ctx.runs, clocks=ctx.clocks)
    section["time_to_first_audio"] = {"text": TTFA_TEXT, "nfe": ctx.nfe[0], "seconds": ttfa["wall_seconds"]}
    default_nfe = first.nfe or engine.config.nfe_step
    steady = steady_figures("engine", ctx, section["results"], default_nfe, synth_fn)
    section["steady"] = steady
    section["first_request"]["nfe"] = default_nfe
    section["first_request"]["ratio"] = safe_ratio(section["first_request"]["rtf"], steady["rtf"]["median"])
    if ctx.sweep_lengths:
        before_sweep = dynamo_counts()
        rows = length_sweep("engine", ctx.sweep_lengths, synth_fn)
        section["length_sweep"] = {
            "lengths": rows,
            "recompiles_after_ready": {
                "engine_describe": engine.recompiles_since_ready(),
                "dynamo": counts_delta(dynamo_counts(), at_ready),
                "dynamo_sweep": counts_delta(dynamo_counts(), before_sweep),  # the sweep's own share
            },
        }
    else:
        section["length_sweep"] = None
    # Read after the sweep, so they cover every request of the section.
    describe = engine.describe()
    section["describe"] = describe
    section["recompiles_after_ready"] = {
        "engine_describe": describe.get("recompiles_since_ready"),
        "dynamo": counts_delta(dynamo_counts(), at_ready),
    }
    last_figures(ctx, section, lambda: engine_step(ctx, engine))
    engine = None  # the synth closures share this cell: dropping it here frees the model
    free(torch, ctx.device)
    return section


def engine_step(ctx: Context, engine: Any) -> dict[str, Any]:
    """One guided step of the engine (compiled where it is) at the bucket holding ``step_frames``,
    without the once-per-request preparation of the padded path."""
    torch = ctx.torch
    sampler = engine.sampler
    bucket = sampler.bucket_for(ctx.step_frames) if sampler.buckets else None
    frames = bucket or ctx.step_frames
    tr = sampler.transformer
    forward = sampler._forward if (bucket is not None or not sampler.buckets) else sampler._guided_dit
    before = dynamo_counts()
    # Inputs made under inference_mode like the engine's own: dynamo guards on that, and a
    # mismatch would time a recompile instead of a step.
    with torch.inference_mode():
        x, cond, text, t = step_inputs(torch, engine.model, frames, ctx.device)
        mask = None
        if sampler.buckets:
            mask = (torch.arange(frames, device=ctx.device) < ctx.step_frames).unsqueeze(0)
        text_cond = tr.text_embed(text, seq_len=frames)
        text_uncond = tr.text_embed(text, seq_len=frames, drop_text=True)
        if mask is not None:
            # The padded path prepares a request once (input projection of the reference and text,
            # the modulations of all its steps); a step is what follows, as in the engine's loop.
            prepared = sampler.prepare(cond, text_cond, text_uncond, t.reshape(1), mask)

            def step():
                return sampler._step(x, *prepared.step_inputs(0))
        else:
            def step():
                return forward(x, cond, text_cond, text_uncond, t, mask)
        stats = time_step(torch, ctx.device, step, ctx.step_iterations)
    return {"frames": ctx.step_frames, "run_frames": frames, "batch": 2, "compiled": bool(sampler.compiled),
            "ms": stats, "dynamo": counts_delta(dynamo_counts(), before)}
