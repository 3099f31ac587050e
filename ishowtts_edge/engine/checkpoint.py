"""Build F5-TTS and Vocos from local files in the layout upstream releases.

The model is built from f5-tts's own classes (DiT/UNetT/MMDiT + CFM) and an
architecture yaml in f5-tts's config format (``model.backbone``, ``model.arch``,
``model.mel_spec``), and the checkpoint is read exactly as upstream's
``load_checkpoint`` reads it, so a released ``model_*.safetensors`` loads unchanged.
Vocos comes from a local directory as upstream's ``load_vocoder(is_local=True)``
does.  Nothing here downloads anything: every failure is an :class:`EngineLoadError`
naming the file and the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ishowtts_edge.engine import EngineLoadError
from ishowtts_edge.engine.upstream import ensure_f5_model_importable, f5_configs_dir
from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)

#: Buffers that older checkpoints carry and current code computes; upstream drops them (305e3ea).
_LEGACY_KEYS = ("mel_spec.mel_stft.mel_scale.fb", "mel_spec.mel_stft.spectrogram.window")
_BACKBONES = ("DiT", "UNetT", "MMDiT")


@dataclass
class ModelArch:
    """One architecture, as in f5_tts/configs/<name>.yaml."""

    name: str
    backbone: str
    arch: dict[str, Any]
    mel_spec: dict[str, Any]
    source: Path | None = None

    @property
    def sample_rate(self) -> int:
        return int(self.mel_spec["target_sample_rate"])

    @property
    def hop_length(self) -> int:
        return int(self.mel_spec["hop_length"])

    @property
    def mel_spec_type(self) -> str:
        return str(self.mel_spec.get("mel_spec_type", "vocos"))

    def to_yaml(self) -> str:
        doc = {"model": {"name": self.name, "backbone": self.backbone, "arch": self.arch, "mel_spec": self.mel_spec}}
        return yaml.safe_dump(doc, sort_keys=False)


def read_arch(name_or_path: str | Path) -> ModelArch:
    """An arch by f5-tts config name (``F5TTS_v1_Base``) or from a yaml file in that format."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text)
    else:
        path = f5_configs_dir() / f"{text}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in f5_configs_dir().glob("*.yaml"))
            raise EngineLoadError(f"engine.model {text!r}: no such f5-tts architecture (known: {', '.join(known)})")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineLoadError(f"{path}: architecture file not found") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise EngineLoadError(f"{path}: unreadable architecture file: {exc}") from None
    try:
        model = doc["model"]
        arch = ModelArch(
            name=str(model["name"]),
            backbone=str(model["backbone"]),
            arch=dict(model["arch"]),
            mel_spec=dict(model["mel_spec"]),
            source=path,
        )
    except (KeyError, TypeError) as exc:
        raise EngineLoadError(f"{path}: not an f5-tts model config (missing {exc})") from None
    if arch.backbone not in _BACKBONES:
        raise EngineLoadError(f"{path}: unknown backbone {arch.backbone!r} (known: {', '.join(_BACKBONES)})")
    return arch


def read_vocab(path: Path) -> tuple[dict[str, int], int]:
    """vocab.txt through upstream's get_tokenizer(path, "custom")."""
    ensure_f5_model_importable()
    from f5_tts.model.utils import get_tokenizer

    try:
        vocab_char_map, vocab_size = get_tokenizer(str(path), "custom")
    except FileNotFoundError:
        raise EngineLoadError(f"{path}: vocab file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineLoadError(f"{path}: unreadable vocab file: {exc}") from None
    if vocab_size == 0:
        raise EngineLoadError(f"{path}: vocab file is empty")
    return vocab_char_map, vocab_size


def build_cfm(arch: ModelArch, vocab_char_map: dict[str, int], vocab_size: int) -> torch.nn.Module:
    """The CFM model with random weights, constructed exactly as upstream load_model does."""
    package = ensure_f5_model_importable()
    backbone_cls = getattr(package, arch.backbone)
    mel = arch.mel_spec
    # checkpoint_activations is a training switch; the rest of arch goes through unchanged.
    arch_kwargs = {k: v for k, v in arch.arch.items() if k != "checkpoint_activations"}
    return package.CFM(
        transformer=backbone_cls(**arch_kwargs, text_num_embeds=vocab_size, mel_dim=int(mel["n_mel_channels"])),
        mel_spec_kwargs=dict(
            n_fft=int(mel["n_fft"]),
            hop_length=int(mel["hop_length"]),
            win_length=int(mel["win_length"]),
            n_mel_channels=int(mel["n_mel_channels"]),
            target_sample_rate=int(mel["target_sample_rate"]),
            mel_spec_type=str(mel.get("mel_spec_type", "vocos")),
        ),
        odeint_kwargs=dict(method="euler"),
        vocab_char_map=vocab_char_map,
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a released checkpoint, keys as upstream load_checkpoint(use_ema=True) leaves them."""
    if not path.is_file():
        raise EngineLoadError(f"{path}: checkpoint not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            ema = load_file(str(path), device="cpu")
        elif suffix in (".pt", ".pth", ".ckpt", ".bin"):
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(checkpoint, dict) or "ema_model_state_dict" not in checkpoint:
                raise EngineLoadError(f"{path}: .pt checkpoint has no ema_model_state_dict")
            ema = checkpoint["ema_model_state_dict"]
        else:
            raise EngineLoadError(f"{path}: unknown checkpoint type {suffix!r} (want .safetensors or .pt)")
    except EngineLoadError:
        raise
    except Exception as exc:  # safetensors/pickle raise many types for a truncated or foreign file
        raise EngineLoadError(f"{path}: corrupt or unreadable checkpoint: {type(exc).__name__}: {exc}") from None
    state = {k.replace("ema_model.", ""): v for k, v in ema.items() if k not in ("initted", "step")}
    for key in _LEGACY_KEYS:
        state.pop(key, None)
    return state


def load_model(
    arch: ModelArch, checkpoint: Path, vocab: Path, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    vocab_char_map, vocab_size = read_vocab(vocab)
    model = build_cfm(arch, vocab_char_map, vocab_size)
    state = read_state_dict(checkpoint)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:4])
        raise EngineLoadError(
            f"{checkpoint}: weights do not fit architecture {arch.name} with vocab {vocab} "
            f"({vocab_size} entries): {detail}"
        ) from None
    model = model.to(dtype).to(device).eval()
    log.info("model loaded %s", kv(arch=arch.name, checkpoint=checkpoint, vocab_size=vocab_size, dtype=str(dtype).removeprefix("torch.")))
    return model


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Write ``model`` as a released-format safetensors file (``ema_model.`` keys, fp32, contiguous)."""
    from safetensors.torch import save_file

    state = {
        "ema_model." + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    save_file(state, str(path))


# --- vocoder ---------------------------------------------------------------------------------


@dataclass
class VocosConfig:
    """The dims of a Vocos in charactr/vocos-mel-24khz's config.yaml layout."""

    sample_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 100
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> str:
        doc = {
            "feature_extractor": {
                "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                "init_args": {
                    "sample_rate": self.sample_rate,
                    "n_fft": self.n_fft,
                    "hop_length": self.hop_length,
                    "n_mels": self.n_mels,
                    "padding": "center",
                },
            },
            "backbone": {
                "class_path": "vocos.models.VocosBackbone",
                "init_args": {
                    "input_channels": self.n_mels,
                    "dim": self.dim,
                    "intermediate_dim": self.intermediate_dim,
                    "num_layers": self.num_layers,
                },
            },
            "head": {
                "class_path": "vocos.heads.ISTFTHead",
                "init_args": {"dim": self.dim, "n_fft": self.n_fft, "hop_length": self.hop_length, "padding": "center"},
            },
        }
        return yaml.safe_dump(doc, sort_keys=False)


def load_vocos(directory: Path, device: torch.device) -> torch.nn.Module:
    """Vocos from ``directory`` (config.yaml + pytorch_model.bin), as upstream load_vocoder(is_local=True)."""
    from vocos import Vocos
    from vocos.feature_extractors import EncodecFeatures

    config_path = directory / "config.yaml"
    model_path = directory / "pytorch_model.bin"
    for required in (config_path, model_path):
        if not required.is_file():
            raise EngineLoadError(f"{required}: vocoder file not found")
    # Only vocos's own classes may be named: instantiate_class imports whatever class_path says.
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        paths = [config[part]["class_path"] for part in ("feature_extractor", "backbone", "head")]
    except Exception as exc:
        raise EngineLoadError(f"{config_path}: not a Vocos config: {exc}") from None
    foreign = [p for p in paths if not str(p).startswith("vocos.")]
    if foreign:
        raise EngineLoadError(f"{config_path}: class_path outside the vocos package: {', '.join(map(str, foreign))}")
    try:
        vocoder = Vocos.from_hparams(str(config_path))
    except Exception as exc:
        raise EngineLoadError(f"{config_path}: cannot build Vocos: {type(exc).__name__}: {exc}") from None
    try:
        state_dict = torch.load(str(model_path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EngineLoadError(f"{model_path}: corrupt or unreadable vocoder weights: {type(exc).__name__}: {exc}") from None
    if isinstance(vocoder.feature_extractor, EncodecFeatures):
        state_dict.update(
            {
                "feature_extractor.encodec." + key: value
                for key, value in vocoder.feature_extractor.encodec.state_dict().items()
            }
        )
    try:
        vocoder.load_state_dict(state_dict)
    except RuntimeError as exc:
        detail = "; ".join(line.strip() for line in str(exc).strip().splitlines()[:4])
        raise EngineLoadError(f"{model_path}: weights do not fit {config_path}: {detail}") from None
    return vocoder.eval().to(device)


def save_vocos(vocoder: torch.nn.Module, config: VocosConfig, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    state = {k: v.detach().cpu().contiguous() for k, v in vocoder.state_dict().items()}
    torch.save(state, str(directory / "pytorch_model.bin"))


def build_vocos(config: VocosConfig) -> torch.nn.Module:
    from vocos import Vocos
    from vocos.feature_extractors import MelSpectrogramFeatures
    from vocos.heads import ISTFTHead
    from vocos.models import VocosBackbone

    return Vocos(
        feature_extractor=MelSpectrogramFeatures(
            sample_rate=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels
        ),
        backbone=VocosBackbone(
            input_channels=config.n_mels,
            dim=config.dim,
            intermediate_dim=config.intermediate_dim,
            num_layers=config.num_layers,
        ),
        head=ISTFTHead(dim=config.dim, n_fft=config.n_fft, hop_length=config.hop_length, padding="center"),
    )
