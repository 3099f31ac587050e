"""Loading the engine: device, files, model, vocoder, sampler and voices, into one whole Engine.

There is no half-loaded engine: :func:`load_engine` either returns an
:class:`~.core.Engine` with every part present or raises
:class:`~ishowtts_edge.engine.EngineLoadError` naming the file and the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ishowtts_edge.config import EngineConfig, Settings
from ishowtts_edge.engine import EngineLoadError
from ishowtts_edge.engine.attention import flash_unavailable
from ishowtts_edge.engine.checkpoint import ModelArch, load_model, load_vocos, read_arch
from ishowtts_edge.engine.clock import ClockEmulator
from ishowtts_edge.engine.core import Engine, dtype_name
from ishowtts_edge.engine.demo import ensure_demo_bundle
from ishowtts_edge.engine.heartbeat import Progress, heartbeat, no_progress
from ishowtts_edge.engine.prompt import PromptPreparer
from ishowtts_edge.engine.sampler import FlowSampler
from ishowtts_edge.engine.upstream import ensure_f5_model_importable, f5_default_vocab
from ishowtts_edge.engine.vocoder import Vocoder
from ishowtts_edge.engine.voices import VoiceRegistry
from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class ModelFiles:
    """What a model is loaded from: the configured files, or the generated demo bundle."""

    arch: ModelArch
    checkpoint: Path
    vocab: Path
    vocoder_dir: Path
    demo_voice_dir: Path | None = None  # the demo bundle's reference voice


def load_engine(settings: Settings, progress: Progress | None = None) -> Engine:
    """Model, vocoder, sampler and voices; raises EngineLoadError naming the file and the reason."""
    progress = progress or no_progress
    cfg = settings.engine
    ensure_f5_model_importable()
    device, dtype = resolve_device(cfg)
    files = _demo_files(settings, progress) if cfg.checkpoint is None else _configured_files(cfg, cfg.checkpoint)
    try:
        with heartbeat(progress, f"loading model {files.arch.name}"):
            model = load_model(files.arch, files.checkpoint, files.vocab, device, dtype)
        with heartbeat(progress, "loading vocoder"):
            vocos = load_vocos(files.vocoder_dir, device)
    except torch.cuda.OutOfMemoryError:
        model = None  # noqa: F841 -- release what was loaded before emptying the cache
        torch.cuda.empty_cache()
        raise EngineLoadError(f"{files.checkpoint}: not enough GPU memory to load {files.arch.name}") from None
    vocoder = Vocoder(vocos, device, dtype)
    attention, attention_note = _attention_kernel(cfg.attention, model, device, dtype)
    sampler = _sampler(cfg, model, device, attention)
    clock = ClockEmulator(cfg.emulate_clock_devfreq) if cfg.emulate_clock_devfreq else None
    if clock is not None:
        log.warning("clock emulation is on (testing only) %s", kv(devfreq=cfg.emulate_clock_devfreq))

    prompts = PromptPreparer(model.mel_spec, files.arch, device, dtype,
                             max_ref_seconds=cfg.max_ref_seconds, target_rms=cfg.target_rms)
    registry = VoiceRegistry(prompts.prepare, cfg.adhoc_voice_cache)
    with heartbeat(progress, "preparing voices"):
        registry.configure(settings.voices, files.demo_voice_dir)
    if settings.default_voice not in {v["id"] for v in registry.list()}:
        log.warning(
            "default_voice is not a configured voice: requests without a voice will fail %s",
            kv(default_voice=settings.default_voice),
        )
    log.info(
        "engine loaded %s",
        kv(device=device.type, dtype=dtype_name(dtype), model=files.arch.name, demo=cfg.checkpoint is None,
           voices=registry.available()),
    )
    return Engine(
        settings, arch=files.arch, checkpoint_path=files.checkpoint, device=device, dtype=dtype, model=model,
        vocoder=vocoder, sampler=sampler, attention_note=attention_note, prompts=prompts, registry=registry,
        demo_voice_dir=files.demo_voice_dir, clock=clock,
    )


def resolve_device(cfg: EngineConfig) -> tuple[torch.device, torch.dtype]:
    """engine.device and engine.dtype on this machine: CUDA runs FP16 unless told, the CPU float32."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise EngineLoadError("engine.device = cuda, but torch sees no CUDA device")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        if cfg.dtype not in ("auto", "float32"):
            log.warning("engine.dtype %s ignored on CPU: running float32", cfg.dtype)
        return torch.device("cpu"), torch.float32
    return torch.device("cuda"), torch.float16 if cfg.dtype == "auto" else _DTYPES[cfg.dtype]


def _demo_files(settings: Settings, progress: Progress) -> ModelFiles:
    """No engine.checkpoint: the untrained demo bundle, generated once under the cache dir."""
    cache_dir = settings.paths.cache_dir
    try:
        with heartbeat(progress, "preparing the demo checkpoint"):
            bundle = ensure_demo_bundle(cache_dir)
    except OSError as exc:
        raise EngineLoadError(f"{cache_dir}: cannot write the demo checkpoint: {exc}") from None
    log.warning(
        "no engine.checkpoint configured: using the UNTRAINED demo model; it produces non-speech noise %s",
        kv(dir=bundle.root),
    )
    return ModelFiles(read_arch(bundle.arch_path), bundle.checkpoint, bundle.vocab, bundle.vocoder_dir,
                      bundle.voice_dir)


def _configured_files(cfg: EngineConfig, checkpoint: Path) -> ModelFiles:
    """engine.checkpoint and what sits beside it (vocab.txt, vocos/) unless given."""
    arch = read_arch(cfg.model)
    if not checkpoint.is_file():  # the most likely mistake: say it before anything derived from it
        raise EngineLoadError(f"engine.checkpoint {checkpoint}: file not found")
    vocab = cfg.vocab or (checkpoint.parent / "vocab.txt")
    if cfg.vocab is None and not vocab.is_file():
        vocab = f5_default_vocab()
    vocoder_dir = cfg.vocoder_dir or (checkpoint.parent / "vocos")
    if cfg.vocoder_dir is None and not vocoder_dir.is_dir():
        raise EngineLoadError(
            f"engine.vocoder_dir is not set and {vocoder_dir} does not exist: give the local Vocos "
            "directory (config.yaml + pytorch_model.bin)"
        )
    return ModelFiles(arch, checkpoint, vocab, vocoder_dir)


def _attention_kernel(wanted: str, model: torch.nn.Module, device: torch.device,
                      dtype: torch.dtype) -> tuple[str, str | None]:
    """engine.attention on this device: flash only where its check passes, else sdpa (and why)."""
    if wanted == "sdpa":
        return "sdpa", None
    blocks = getattr(model.transformer, "transformer_blocks", None)
    if not blocks:
        reason = "the backbone has no attention blocks"
    else:
        attn = blocks[0].attn
        reason = flash_unavailable(device, dtype, attn.heads, attn.inner_dim // attn.heads)
    if reason is None:
        return "flash", None
    log.warning("engine.attention = flash cannot be used; using sdpa %s", kv(reason=reason))
    return "sdpa", f"flash unavailable: {reason}"


def _sampler(cfg: EngineConfig, model: torch.nn.Module, device: torch.device, attention: str) -> FlowSampler:
    """The sampler as configured: compiled and bucketed on CUDA, eager on the CPU."""
    # CPU runs eager unless a tracing-only backend is asked for (tests of the compiled path).
    compiling = cfg.compile and (device.type == "cuda" or cfg.compile_backend != "inductor")
    compile_mode = cfg.compile_mode if compiling else None
    pad = cfg.pad_to_buckets == "always" or (cfg.pad_to_buckets == "auto" and compile_mode is not None)
    return FlowSampler(
        model,
        buckets=cfg.length_buckets if pad else None,
        compile_mode=compile_mode,
        compile_backend=cfg.compile_backend,
        cuda_graphs=cfg.cuda_graphs
        and device.type == "cuda"
        and compile_mode is not None
        and compile_mode not in ("reduce-overhead", "max-autotune"),  # those capture their own graphs
        dynamic=cfg.compile_dynamic,
        scope=cfg.compile_scope,
        attention=attention,
    )
