"""The upstream section: f5-tts's own ``F5TTS.infer`` on the run's random weights.

Optional: upstream's API module imports hydra, omegaconf and (through ``utils_infer``)
matplotlib, pydub and transformers, which the daemon never needs and the .deb does not
carry.  They are the ``bench`` extra; without them the section is skipped with a
message saying so, and the other sections run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

from .context import Context
from .measure import Sample, count_params, free, last_figures, measure, reset_peak, step_inputs, time_step
from .texts import TEXTS


class UpstreamUnavailable(RuntimeError):
    """Upstream's API cannot be imported here (the ``bench`` extra is missing): the section is skipped, not failed."""


def install_cached_path_placeholder(force: bool) -> str:
    """Make ``from cached_path import cached_path`` in f5_tts.api succeed without the real package.

    ``cached_path`` drags in boto3 and google-cloud; upstream calls it only when no
    ``ckpt_file`` is given, which the bench always gives.  Returns "real" or "placeholder"
    so the report says which was used.
    """
    if not force:
        try:
            importlib.import_module("cached_path")
            return "real"
        except Exception:  # ImportError, or a broken boto3/google-cloud underneath it
            pass
    module = types.ModuleType("cached_path")

    def cached_path(url: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"downloads disabled in the benchmark (asked for {url})")

    module.cached_path = cached_path  # type: ignore[attr-defined]
    module.__doc__ = "placeholder registered by ishowtts-edge bench: downloads disabled in the benchmark"
    sys.modules["cached_path"] = module
    return "placeholder"


def import_api() -> Any:
    """``f5_tts.api``, or UpstreamUnavailable naming the missing module and where it comes from."""
    from ishowtts_edge.engine.upstream import ensure_f5_model_importable

    ensure_f5_model_importable()
    try:
        import f5_tts.api as api
    except ModuleNotFoundError as exc:
        missing = (exc.name or "?").split(".")[0]
        raise UpstreamUnavailable(
            f"upstream f5-tts's F5TTS API needs the module {missing!r}, which is not installed. It is part of "
            "the `bench` extra (pip install -e '.[bench]' in a source checkout; the .deb does not carry it). "
            "The engine and daemon sections run without it: compare them with the upstream figures in "
            "docs/benchmarks.md"
        ) from exc
    return api


@contextlib.contextmanager
def stdout_to_stderr():
    """Upstream prints (vocab, model path, batches); keep stdout for the table."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def build_upstream(bundle: Any, arch_name: str, device: str, work_dir: Path) -> Any:
    """upstream's F5TTS object on our random weights: ckpt_file / vocab_file / vocoder_local_path given.

    F5TTS.__init__ reads the arch as ``files("f5_tts") / configs/<model>.yaml``.  The full
    model is one of upstream's configs and is used as is.  The demo arch is not, so for it
    f5_tts.api's ``files`` is pointed (for the constructor only) at a directory holding
    the bundle's model.yaml as configs/<name>.yaml; everything else is upstream's code.
    """
    from ishowtts_edge.engine.upstream import f5_configs_dir

    api = import_api()
    kwargs = dict(
        model=arch_name,
        ckpt_file=str(bundle.checkpoint),
        vocab_file=str(bundle.vocab),
        vocoder_local_path=str(bundle.vocoder_dir),
        device=device,
    )
    if (f5_configs_dir() / f"{arch_name}.yaml").is_file():
        with stdout_to_stderr():
            return api.F5TTS(**kwargs)
    shadow = work_dir / "upstream-config-root"
    (shadow / "configs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle.arch_path, shadow / "configs" / f"{arch_name}.yaml")
    real_files = api.files
    api.files = lambda package: shadow if package == "f5_tts" else real_files(package)
    try:
        with stdout_to_stderr():
            return api.F5TTS(**kwargs)
    finally:
        api.files = real_files


@contextlib.contextmanager
def torchaudio_load_fallback(ref_audio: Path, report: dict[str, Any]):
    """upstream's infer_process reads the reference with ``torchaudio.load``.

    torchaudio >= 2.9 decodes through torchcodec, which needs FFmpeg's shared libraries;
    where that fails, ``torchaudio.load`` is replaced for the upstream section only by a
    soundfile reader returning what torchaudio returns for a WAV (float32 (channels,
    frames) tensor in [-1, 1], sample rate).  ``report["torchaudio_load"]`` says which ran.
    """
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio

    try:
        torchaudio.load(str(ref_audio))
        failure = None
    except Exception as exc:  # ImportError (no torchcodec) or RuntimeError (no FFmpeg libraries)
        failure = type(exc).__name__
    if failure is None:
        report["torchaudio_load"] = "torchaudio"
        yield
        return
    report["torchaudio_load"] = f"soundfile (torchaudio.load failed: {failure})"

    def load(path: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), rate

    real = torchaudio.load
    torchaudio.load = load
    try:
        yield
    finally:
        torchaudio.load = real


def run_upstream(ctx: Context) -> dict[str, Any]:
    section: dict[str, Any] = {}
    with torchaudio_load_fallback(ctx.ref_audio, section):
        return _run_upstream(ctx, section)


def _run_upstream(ctx: Context, section: dict[str, Any]) -> dict[str, Any]:
    torch = ctx.torch
    reset_peak(torch, ctx.device)
    started = time.perf_counter()
    tts = build_upstream(ctx.bundle, ctx.checkpoint_info["arch"], ctx.device, ctx.work_dir)
    section.update({
        "load_seconds": time.perf_counter() - started,
        "params": count_params(tts.ema_model),
        "vocoder_params": count_params(tts.vocoder),
        "dtype": str(next(tts.ema_model.parameters()).dtype).removeprefix("torch."),
        "results": [],
    })

    def quiet(*_: Any, **__: Any) -> None:
        pass

    for nfe in ctx.upstream_nfe:
        for name in ctx.texts:

            def synth(seed: int, text: str = TEXTS[name], nfe: int = nfe) -> Sample:
                t0 = time.perf_counter()
                with stdout_to_stderr():
                    wav, sr, _ = tts.infer(
                        str(ctx.ref_audio), ctx.ref_text, text, show_info=quiet, progress=None,
                        nfe_step=nfe, seed=seed,
                    )
                if ctx.device == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
                return Sample(elapsed, len(wav) / sr, elapsed)

            row = measure(f"upstream nfe {nfe} {name}", synth, ctx.warmup, ctx.runs, clocks=ctx.clocks)
            section["results"].append({"nfe": nfe, "text": name, **row})
    last_figures(ctx, section, lambda: upstream_step(ctx, tts.ema_model))
    tts = None  # the synth closures share this cell: dropping it here frees the model
    free(torch, ctx.device)
    return section


def upstream_step(ctx: Context, model: Any) -> dict[str, Any]:
    """Upstream's per-step call in CFM.sample: transformer(cfg_infer=True, cache=True), text embedding cached."""
    torch = ctx.torch
    x, cond, text, t = step_inputs(torch, model, ctx.step_frames, ctx.device)
    tr = model.transformer

    def call() -> Any:
        return tr(x=x, cond=cond, text=text, time=t, mask=None, drop_audio_cond=False, drop_text=False,
                  cfg_infer=True, cache=True)

    with torch.inference_mode():
        stats = time_step(torch, ctx.device, call, ctx.step_iterations)
        tr.clear_cache()
    return {"frames": ctx.step_frames, "run_frames": ctx.step_frames, "batch": 2, "ms": stats}


def borrowed_upstream(path: Path, meta: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The upstream section of an earlier report, refused unless it measured the same thing."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        section = earlier["sections"]["upstream"]
        then = earlier["meta"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"bench: --upstream-from {path}: not a bench report with an upstream section ({exc})")
    if "error" in section or not section.get("results"):
        raise SystemExit(f"bench: --upstream-from {path}: its upstream section has no results")
    mismatched = [
        what for what, a, b in (
            ("device", then.get("device"), meta["device"]),
            ("model", then.get("model"), meta["model"]),
            ("reference", then.get("reference"), meta["reference"]),
            ("checkpoint", (earlier.get("checkpoint") or {}).get("arch"), checkpoint["arch"]),
            ("gpu", then.get("machine", {}).get("gpu"), meta["machine"].get("gpu")),
            ("text", {k: v for k, v in (then.get("texts") or {}).items() if k in meta["texts"]},
             {k: v for k, v in meta["texts"].items() if k in (then.get("texts") or {})}),
        ) if a != b
    ]
    if mismatched:
        raise SystemExit(f"bench: --upstream-from {path}: measured with a different {', '.join(mismatched)}")
    return {**section, "borrowed_from": {"path": str(path), "started": then.get("started")}}
