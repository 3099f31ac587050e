"""Warm-up: run every shape a request can produce before READY, so nothing compiles after it.

With length buckets (CUDA) each bucket is sampled once at its full length (compiling the
transformer for it and capturing its CUDA graphs for every step count served from one),
then the vocoder gets its CUDA graphs (else its FFT plans) for every length a bucket can
hold, then one real request runs end to end.  Without buckets (the CPU) one short real
synthesis is enough.  A compile that fails leaves the engine eager and says why in the
report; the daemon then serves degraded (docs/engine.md).
"""

from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING

import torch

from ishowtts_edge.engine import WarmupReport
from ishowtts_edge.engine.heartbeat import Progress, heartbeat
from ishowtts_edge.engine.voices import PreparedVoice
from ishowtts_edge.logs import kv
from ishowtts_edge.protocol import ServiceError, SynthesizeParams

if TYPE_CHECKING:
    from ishowtts_edge.engine.core import Engine

log = logging.getLogger(__name__)


def warm_up(engine: Engine, progress: Progress) -> WarmupReport:
    """Every bucket, the vocoder and the text front end; the caller holds the engine's lock."""
    started = time.perf_counter()
    sampler = engine.sampler
    error: str | None = None
    shapes: list[int] = []
    if not engine.config.warmup:
        pass
    elif sampler.buckets:
        for bucket in sampler.buckets:
            message = f"warming up {bucket} frames{' (compiling)' if sampler.compiled else ''}"
            try:
                bucket_started = time.perf_counter()
                with heartbeat(progress, message):
                    _warm_bucket(engine, bucket)
                log.debug("bucket warm %s", kv(frames=bucket, seconds=time.perf_counter() - bucket_started))
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                raise
            except Exception as exc:  # inductor/triton failures come in many types
                if not sampler.compiled:
                    raise
                error = f"torch.compile failed, running eager: {type(exc).__name__}: {exc}"[:500]
                log.warning("%s", error)
                sampler.disable_compile()
                with heartbeat(progress, f"warming up {bucket} frames (eager)"):
                    _warm_bucket(engine, bucket)
            shapes.append(bucket)
        _warm_vocoder(engine, sampler.buckets[-1], progress)
        # One real request end to end: text front end (pinyin/jieba dictionaries load on
        # first use), voice tensors and the vocoder, so the first request after READY
        # costs what every later one does.
        with heartbeat(progress, "warming up the text front end"):
            _warm_once(engine)
    else:
        with heartbeat(progress, "warming up"):
            shapes.append(_warm_once(engine))
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    if sampler.graphs is not None:
        sampler.graphs.freeze()
    report = WarmupReport(
        seconds=time.perf_counter() - started, shapes=shapes, compiled=bool(sampler.compiled), error=error
    )
    log.info("warm-up done %s", kv(seconds=report.seconds, shapes=len(shapes), compiled=report.compiled))
    return report


def _warm_vocoder(engine: Engine, max_frames: int, progress: Progress) -> None:
    """CUDA graphs of the vocoder for every length a bucket can hold (else its FFT plans).

    A capture that fails leaves the vocoder eager: slower by a little, and said in the log.
    """
    vocoder = engine.vocoder
    if engine.sampler.graphs is not None:
        try:
            with heartbeat(progress, "capturing the vocoder's CUDA graphs"):
                captured = vocoder.capture_graphs(max_frames)
            if captured:
                log.info("vocoder graphs captured %s", kv(lengths=captured, max_frames=max_frames))
                return
        except Exception as exc:  # includes CUDA OOM: the eager vocoder needs less memory
            vocoder.release_graphs()
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            log.warning("vocoder CUDA graph capture failed, running it eager %s",
                        kv(error=f"{type(exc).__name__}: {exc}"[:300]))
    with heartbeat(progress, "warming up the vocoder's FFT plans"):
        vocoder.warm_fft_plans(max_frames)


def _warm_bucket(engine: Engine, frames: int) -> None:
    """One sample at exactly ``frames`` (fills the bucket) plus the vocoder on its output length."""
    config, device = engine.config, engine.device
    ref_frames = max(1, frames // 3)
    generator = torch.Generator(device=device).manual_seed(0)
    cond = torch.randn(1, ref_frames, engine.model.num_channels, generator=generator, device=device).to(engine.dtype)
    vocab_size = max(len(engine.model.vocab_char_map or {}), 1)
    text = torch.randint(0, vocab_size, (1, max(1, frames // 6)), generator=generator, device=device)
    if engine.sampler.graphs is not None:
        # Each step count served from a CUDA graph is captured here: the default and the extras.
        step_counts = sorted({config.nfe_step, *config.cuda_graph_nfe})
    else:
        # Three calls: enough for cudagraph trees (reduce-overhead) to warm up, record and replay.
        step_counts = [min(3, config.nfe_step)]
    for steps in step_counts:
        out = engine.sampler.sample(
            cond, text, frames, steps=steps, cfg_strength=config.cfg_strength,
            sway_sampling_coef=config.sway_sampling_coef, generator=generator,
        )
    with torch.inference_mode():
        engine.vocoder(out.to(torch.float32)[:, ref_frames:, :].permute(0, 2, 1))


def _warm_once(engine: Engine) -> int:
    """One short real synthesis (default voice if it works, else a synthetic one); its mel frames."""
    voice = _warmup_voice(engine)
    params = SynthesizeParams(text="Warm up.", seed=0)
    opts = engine._options(params)
    generator = torch.Generator(device=engine.device).manual_seed(opts["seed"])
    _, frames, _ = engine._chunk(voice.payload, params.text, opts, generator)
    return frames


def _warmup_voice(engine: Engine) -> PreparedVoice:
    try:
        return engine.registry.get(engine.settings.default_voice)
    except ServiceError:
        import soundfile as sf

        from ishowtts_edge.engine.demo import synth_reference_wave

        buf = io.BytesIO()
        sf.write(buf, synth_reference_wave(), 24000, format="WAV", subtype="PCM_16")
        return engine.prompts.prepare(buf.getvalue(), "Warm up reference.", "warm-up")
