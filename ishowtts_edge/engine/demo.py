"""The demo checkpoint: a tiny, untrained F5-TTS written in the released file layout.

A fresh install has no weights (they cannot ship in the .deb, and nothing is
downloaded at run time), yet the daemon must start, warm up and answer requests so
that the appliance can be checked end to end.  When ``engine.checkpoint`` is unset
the engine generates this bundle once under ``<cache_dir>/demo/`` and loads it
through exactly the same code as a real checkpoint: an arch yaml in f5-tts's config
format, ``model_demo.safetensors`` with ``ema_model.`` keys, ``vocab.txt``, a Vocos
directory (config.yaml + pytorch_model.bin) and a demo voice (ref.wav + ref.txt).
Its output is noise-like, not speech.  Tests build their random checkpoints with
:func:`write_demo_bundle` too, so the save/load path is the one under test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ishowtts_edge.engine.checkpoint import (
    ModelArch,
    VocosConfig,
    build_cfm,
    build_vocos,
    read_vocab,
    save_checkpoint,
    save_vocos,
)
from ishowtts_edge.engine.upstream import f5_default_vocab
from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)

#: Bump when the generated content changes, so old caches are regenerated.
DEMO_FORMAT = 2
DEMO_VOICE_TEXT = "This is the untrained demo voice of the speech appliance."

#: Same mel settings as the released models (the vocoder depends on them); tiny transformer.
DEMO_ARCH = ModelArch(
    name="F5TTS_demo_tiny",
    backbone="DiT",
    arch={
        "dim": 64,
        "depth": 2,
        "heads": 2,
        "dim_head": 32,
        "ff_mult": 2,
        "text_dim": 64,
        "text_mask_padding": True,
        "qk_norm": None,
        "conv_layers": 2,
        "pe_attn_head": None,
        "attn_backend": "torch",
        "attn_mask_enabled": False,
        "checkpoint_activations": False,
    },
    mel_spec={
        "target_sample_rate": 24000,
        "n_mel_channels": 100,
        "hop_length": 256,
        "win_length": 1024,
        "n_fft": 1024,
        "mel_spec_type": "vocos",
    },
)
DEMO_VOCOS = VocosConfig(dim=64, intermediate_dim=192, num_layers=2)


@dataclass(frozen=True)
class DemoBundle:
    root: Path

    @property
    def arch_path(self) -> Path:
        return self.root / "model.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "model_demo.safetensors"

    @property
    def vocab(self) -> Path:
        return self.root / "vocab.txt"

    @property
    def vocoder_dir(self) -> Path:
        return self.root / "vocos"

    @property
    def voice_dir(self) -> Path:
        return self.root / "voice"

    @property
    def manifest(self) -> Path:
        return self.root / "demo.json"


def _randomize(module: torch.nn.Module, generator: torch.Generator, std: float) -> None:
    """Give the layers upstream zero-initialises (AdaLN, output projection) random values.

    With them at zero the transformer predicts a zero flow and every output equals its
    input noise, which would let an equivalence test pass without exercising anything.
    """
    with torch.no_grad():
        for param in module.parameters():
            if param.is_floating_point() and not torch.any(param):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def synth_reference_wave(seconds: float = 3.0, sample_rate: int = 24000, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-shaped test signal with silent edges (float32 mono)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = 140.0 * (1.0 + 0.03 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(np.pi * 2.2 * (t - 0.25)), 0.0, None) ** 2
    envelope = np.where((t > 0.25) & (t < seconds - 0.25), syllables, 0.0)
    wave = 0.25 * envelope * voiced + 0.002 * rng.standard_normal(n) * (envelope > 0)
    return wave.astype(np.float32)


def write_demo_bundle(
    dest: Path,
    *,
    seed: int = 0,
    arch: ModelArch = DEMO_ARCH,
    vocos: VocosConfig = DEMO_VOCOS,
    vocab: Path | None = None,
    weight_std: float = 0.05,
) -> DemoBundle:
    """Write a random-weight bundle into ``dest`` (created); reproducible for a given seed."""
    dest.mkdir(parents=True, exist_ok=True)
    bundle = DemoBundle(dest)
    shutil.copyfile(vocab or f5_default_vocab(), bundle.vocab)
    vocab_char_map, vocab_size = read_vocab(bundle.vocab)
    bundle.arch_path.write_text(arch.to_yaml(), encoding="utf-8")

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_cfm(arch, vocab_char_map, vocab_size)
        vocoder = build_vocos(vocos)
    _randomize(model, generator, weight_std)
    with torch.no_grad():
        # Moderate log-magnitude bias: audible noise that stays well inside [-1, 1].
        out = vocoder.head.out
        out.weight.mul_(0.2)
        out.bias[: vocos.n_fft // 2 + 1] = 0.5
    save_checkpoint(model, bundle.checkpoint)
    save_vocos(vocoder, vocos, bundle.vocoder_dir)

    bundle.voice_dir.mkdir(exist_ok=True)
    sf.write(bundle.voice_dir / "ref.wav", synth_reference_wave(seed=seed), 24000, subtype="PCM_16")
    (bundle.voice_dir / "ref.txt").write_text(DEMO_VOICE_TEXT + "\n", encoding="utf-8")
    manifest = {"format": DEMO_FORMAT, "seed": seed, "files": _hashes(bundle)}
    bundle.manifest.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return bundle


def _bundle_files(bundle: DemoBundle) -> list[Path]:
    return [
        bundle.arch_path,
        bundle.checkpoint,
        bundle.vocab,
        bundle.vocoder_dir / "config.yaml",
        bundle.vocoder_dir / "pytorch_model.bin",
        bundle.voice_dir / "ref.wav",
        bundle.voice_dir / "ref.txt",
    ]


def _hashes(bundle: DemoBundle) -> dict[str, str]:
    out = {}
    for path in _bundle_files(bundle):
        out[str(path.relative_to(bundle.root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def demo_bundle_valid(bundle: DemoBundle, seed: int = 0) -> bool:
    """True when every file is present and matches the manifest written with it."""
    try:
        manifest = json.loads(bundle.manifest.read_text(encoding="utf-8"))
        if manifest.get("format") != DEMO_FORMAT or manifest.get("seed") != seed:
            return False
        return manifest.get("files") == _hashes(bundle)
    except (OSError, ValueError):
        return False


def ensure_demo_bundle(cache_dir: Path, *, seed: int = 0) -> DemoBundle:
    """The cached demo bundle under ``cache_dir/demo``; generated (atomically) when absent or damaged."""
    bundle = DemoBundle(cache_dir / "demo")
    if demo_bundle_valid(bundle, seed):
        return bundle
    if bundle.root.exists():
        log.warning("demo checkpoint cache is incomplete or damaged; regenerating %s", kv(dir=bundle.root))
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=cache_dir))
    try:
        os.chmod(staging, 0o755)
        write_demo_bundle(staging, seed=seed)
        if bundle.root.exists():
            shutil.rmtree(bundle.root)
        os.replace(staging, bundle.root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("generated demo checkpoint %s", kv(dir=bundle.root, seed=seed))
    return bundle
