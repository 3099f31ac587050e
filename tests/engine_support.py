"""Engine test helpers: a small random-weight checkpoint written through the engine's own save path.

Kept out of conftest.py so that it merges cleanly beside other suites; test modules
import the fixtures they use.  Torch runs single-threaded here: the models are tiny,
and on a busy 2-core CI machine OpenMP threads spinning against each other made the
suite several times slower.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ishowtts_edge.config import EngineConfig, PathsConfig, Settings, VoiceConfig
from ishowtts_edge.engine.demo import DemoBundle, synth_reference_wave, write_demo_bundle

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> DemoBundle:
    return write_demo_bundle(tmp_path_factory.mktemp("tiny") / "bundle", seed=7)


def write_reference(path: Path, seconds: float = 2.5, rate: int = 24000, seed: int = 0) -> Path:
    wave = synth_reference_wave(seconds=seconds, sample_rate=rate, seed=seed)
    sf.write(path, wave, rate, subtype="PCM_16")
    return path


def engine_settings(bundle: DemoBundle, tmp_path: Path, voices: dict[str, VoiceConfig] | None = None, **engine) -> Settings:
    return Settings(
        paths=PathsConfig(runtime_dir=tmp_path / "run", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache"),
        engine=EngineConfig(
            device="cpu",
            model=str(bundle.arch_path),
            checkpoint=bundle.checkpoint,
            vocab=bundle.vocab,
            vocoder_dir=bundle.vocoder_dir,
            **engine,
        ),
        voices=voices or {},
        default_voice=next(iter(voices)) if voices else "demo",
    )


def upstream_utils_infer():
    """f5-tts's own inference module, imported through our shim (it needs the test extra)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ishowtts_edge.engine.upstream import ensure_f5_model_importable

        ensure_f5_model_importable()
        import f5_tts.infer.utils_infer as utils_infer
    return utils_infer


@pytest.fixture
def reference_wav(tmp_path: Path) -> Path:
    return write_reference(tmp_path / "ref.wav")


def tone(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def out_of_memory_on_call(real, n: int):
    """``real`` wrapped to raise what CUDA's allocator raises on its ``n``-th call (CUDA cannot run here)."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    return wrapped


class Slowdown:
    """The devfreq files clock emulation reads: ``factor`` 1 is full speed, 50 is fifty times slower."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "max_freq").write_text("1000\n")
        self.set(1)

    def set(self, factor: float) -> None:
        (self.root / "cur_freq").write_text(f"{int(1000 / factor)}\n")
