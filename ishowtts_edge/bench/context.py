"""What one run shares between its sections: the settings, the random-weight checkpoint, the config, the machine."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .measure import GpuClocks, log
from .texts import SWEEP_LENGTHS, VOICE_ID

FULL_ARCH = "F5TTS_v1_Base"


@dataclass
class Context:
    torch: Any
    device: str
    texts: list[str]
    nfe: list[int]
    upstream_nfe: list[int]
    runs: int
    warmup: int
    work_dir: Path
    cache_dir: Path
    runtime_dir: Path
    config_path: Path
    ref_audio: Path
    ref_text: str
    compile: bool
    compile_mode: str | None
    compile_backend: str | None
    daemon_hardware: bool
    daemon_timeout: float
    request_timeout: float
    keep_compile_cache: bool = False
    step_frames: int = 855
    step_iterations: int = 20
    sweep_lengths: list[int] = field(default_factory=lambda: list(SWEEP_LENGTHS))
    idle_seconds: float = 10.0
    bundle: Any = None
    checkpoint_info: Any = None
    clocks: GpuClocks | None = None


def compile_cache_env(root: Path) -> dict[str, str]:
    return {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"), "TRITON_CACHE_DIR": str(root / "triton")}


def empty_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def machine_info(torch: Any, device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    tegra = Path("/etc/nv_tegra_release")
    if tegra.is_file():
        info["nv_tegra_release"] = tegra.read_text(errors="replace").splitlines()[0][:200]
    return info


def ensure_checkpoint(work_dir: Path, model: str, seed: int) -> tuple[Any, dict[str, Any]]:
    """The random-weight bundle for ``model`` under work_dir, generated (atomically) when absent or stale."""
    from ishowtts_edge.engine.checkpoint import VocosConfig, read_arch
    from ishowtts_edge.engine.demo import DEMO_ARCH, DEMO_VOCOS, DemoBundle, demo_bundle_valid, write_demo_bundle

    if model == "demo":
        arch, vocos = DEMO_ARCH, DEMO_VOCOS
    else:
        # Full size: f5-tts's own F5TTS_v1_Base yaml, and charactr/vocos-mel-24khz's dims
        # (VocosConfig's defaults are that config: 24 kHz, n_fft 1024, hop 256, 100 mels,
        # dim 512, intermediate 1536, 8 layers, ISTFT head).
        arch, vocos = read_arch(FULL_ARCH), VocosConfig()
    identity = {"arch": arch.name, "arch_spec": arch.arch, "vocos": vars(vocos), "seed": seed}
    root = work_dir / f"{arch.name}-seed{seed}"
    marker = root / "bench.json"
    bundle = DemoBundle(root)
    started = time.perf_counter()
    try:
        fresh = json.loads(marker.read_text()) == json.loads(json.dumps(identity)) and demo_bundle_valid(bundle, seed)
    except (OSError, ValueError):
        fresh = False
    generated = False
    if not fresh:
        log(f"writing random-weight checkpoint {arch.name} (seed {seed}) to {root}")
        work_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=work_dir))
        try:
            write_demo_bundle(staging, seed=seed, arch=arch, vocos=vocos)
            (staging / "bench.json").write_text(json.dumps(identity, indent=1))
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        generated = True
    size = bundle.checkpoint.stat().st_size
    info = {
        "dir": str(root),
        "arch": arch.name,
        "arch_path": str(bundle.arch_path),
        "checkpoint": str(bundle.checkpoint),
        "checkpoint_bytes": size,
        "vocoder_dir": str(bundle.vocoder_dir),
        "vocab": str(bundle.vocab),
        "seed": seed,
        "generated": generated,
        "seconds": time.perf_counter() - started,
    }
    return bundle, info


def write_config(ctx: Context, path: Path, runtime_dir: Path, state_dir: Path) -> None:
    """One TOML for the in-process engine and the daemon: same checkpoint, voice and sampling."""

    def q(value: Any) -> str:
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string

    lines = [
        f"default_voice = {q(VOICE_ID)}",
        "",
        "[paths]",
        f"runtime_dir = {q(runtime_dir)}",
        f"state_dir = {q(state_dir)}",
        f"cache_dir = {q(ctx.work_dir / 'daemon-cache')}",
        "",
        "[engine]",
        f"device = {q(ctx.device)}",
        f"model = {q(ctx.bundle.arch_path)}",
        f"checkpoint = {q(ctx.bundle.checkpoint)}",
        f"vocab = {q(ctx.bundle.vocab)}",
        f"vocoder_dir = {q(ctx.bundle.vocoder_dir)}",
        f"compile = {'true' if ctx.compile else 'false'}",
    ]
    if ctx.compile_mode:
        lines.append(f"compile_mode = {q(ctx.compile_mode)}")
    if ctx.compile_backend:
        lines.append(f"compile_backend = {q(ctx.compile_backend)}")
    lines += [
        "",
        "[hardware]",
        # The bench measures the engine; power mode / clocks are set beforehand by whoever runs it.
        f"enabled = {'true' if ctx.daemon_hardware else 'false'}",
        "",
        f"[voices.{VOICE_ID}]",
        f"ref_audio = {q(ctx.ref_audio)}",
        f"ref_text = {q(ctx.ref_text)}",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
