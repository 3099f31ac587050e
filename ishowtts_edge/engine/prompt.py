"""Voice prompts: a reference turned into what the sampler conditions on, once per voice.

upstream's ``infer_batch_process`` does this per request: down-mix to mono, lift the
level to ``target_rms`` when quieter, resample to 24 kHz, mel spectrogram, and the
transcript's pinyin tokens.  Here it runs once per voice (``voices.VoiceRegistry``
caches the result) on audio that ``reference.py`` has decoded and clipped.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ishowtts_edge.engine.checkpoint import ModelArch
from ishowtts_edge.engine.reference import MIN_REFERENCE_SECONDS, clip_reference, decode_audio, normalize_ref_text
from ishowtts_edge.engine.text import prompt_ref_text
from ishowtts_edge.engine.upstream import ensure_f5_model_importable
from ishowtts_edge.engine.voices import PreparedVoice
from ishowtts_edge.logs import kv
from ishowtts_edge.protocol import ErrorCode, ServiceError

log = logging.getLogger(__name__)

#: upstream's appended 50 ms of silence is not voice; it does not count towards the minimum length.
_TAIL_SECONDS = 0.05
#: Largest reduced term of rate/target a reference may need (see Resamplers).
MAX_RESAMPLE_RATIO_TERM = 1000
#: Resamplers kept, one per input rate, least recently used dropped first.
MAX_CACHED_RESAMPLERS = 8


@dataclass
class VoicePrompt:
    """A reference ready for sampling: its mel on the device and its prompt tokens."""

    cond: torch.Tensor  # (1, frames, n_mels), model dtype
    ref_audio_len: int  # samples // hop, as upstream counts it
    rms: torch.Tensor  # loudness before the lift to target_rms
    ref_text: str  # the transcript with upstream's sentence stop (what sets the chunk size)
    prompt_text: str  # ref_text plus upstream's trailing space (what is tokenised)
    prompt_tokens: list[str]


class Resamplers:
    """torchaudio resamplers to the model's rate, one per input rate, least recently used dropped.

    Building one costs a polyphase kernel, so they are kept; SIGHUP's voice reload and
    the synthesis worker both resample, hence the lock.
    """

    def __init__(self, target: int, size: int = MAX_CACHED_RESAMPLERS) -> None:
        self.target = target
        self.size = size
        self._cache: dict[int, Any] = {}  # insertion order = use order
        self._lock = threading.Lock()

    def rates(self) -> list[int]:
        """Cached input rates, least recently used first."""
        with self._lock:
            return list(self._cache)

    def __call__(self, audio: torch.Tensor, rate: int) -> torch.Tensor:
        target = self.target
        if rate == target:
            return audio
        with self._lock:
            resampler = self._cache.pop(rate, None)
        if resampler is None:
            import torchaudio

            # torchaudio's polyphase kernel is (target/g) x (rate/g) taps, g = gcd: every usual
            # rate (8 k-384 kHz, 11025 and 44100 families) stays below 400 x 400; 7919 Hz would
            # take 24000 x 7919 (0.7 GB, 18 s).
            g = math.gcd(rate, target)
            if max(rate // g, target // g) > MAX_RESAMPLE_RATIO_TERM:
                raise ServiceError(
                    ErrorCode.BAD_REFERENCE,
                    f"reference sample rate {rate} Hz cannot be resampled to {target} Hz cheaply; "
                    "convert it to a usual rate (16000, 22050, 24000, 44100 or 48000 Hz)",
                )
            resampler = torchaudio.transforms.Resample(rate, target)
        with self._lock:
            self._cache[rate] = resampler  # most recent last
            while len(self._cache) > self.size:
                self._cache.pop(next(iter(self._cache)))
        return resampler(audio)


class PromptPreparer:
    """upstream's reference path for one model: clip, mono, loudness lift, 24 kHz, mel, tokens.

    Its :meth:`prepare` is the :data:`~.voices.Preparer` the voice registry calls.
    """

    def __init__(self, mel_spec: Callable[[torch.Tensor], torch.Tensor], arch: ModelArch, device: torch.device,
                 dtype: torch.dtype, *, max_ref_seconds: float, target_rms: float) -> None:
        self.mel_spec = mel_spec
        self.hop_length = arch.hop_length
        self.device = device
        self.dtype = dtype
        self.max_ref_seconds = max_ref_seconds
        self.target_rms = target_rms
        self.resample = Resamplers(arch.sample_rate)

    def prepare(self, audio_bytes: bytes, ref_text: str, label: str) -> PreparedVoice:
        """Prepare a reference; anything odd about the audio becomes BAD_REFERENCE, never a crash."""
        try:
            return self._prepare(audio_bytes, ref_text, label)
        except (ServiceError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:  # e.g. an absurd sample rate that the resampler refuses
            log.warning("reference preparation failed %s", kv(voice=label, error=f"{type(exc).__name__}: {exc}"))
            raise ServiceError(
                ErrorCode.BAD_REFERENCE, f"{label} audio cannot be used: {type(exc).__name__}: {exc}"
            ) from None

    def _prepare(self, audio_bytes: bytes, ref_text: str, label: str) -> PreparedVoice:
        decoded = decode_audio(audio_bytes, what=f"{label} audio")
        clipped = clip_reference(decoded, self.max_ref_seconds)
        voiced = clipped.seconds - _TAIL_SECONDS
        if voiced < MIN_REFERENCE_SECONDS:
            raise ServiceError(
                ErrorCode.BAD_REFERENCE,
                f"{label} audio has {max(voiced, 0.0):.2f} s of sound after trimming silence; "
                f"at least {MIN_REFERENCE_SECONDS} s is needed",
            )
        normalized = normalize_ref_text(ref_text)
        audio = torch.from_numpy(clipped.samples)
        if audio.shape[0] > 1:
            audio = torch.mean(audio, dim=0, keepdim=True)
        rms = torch.sqrt(torch.mean(torch.square(audio)))
        if rms < self.target_rms:
            audio = audio * self.target_rms / rms
        audio = self.resample(audio, clipped.sample_rate).to(self.device)
        with torch.inference_mode():
            mel = self.mel_spec(audio).permute(0, 2, 1).to(self.dtype)
        ensure_f5_model_importable()
        from f5_tts.model.utils import convert_char_to_pinyin

        prompt_text = prompt_ref_text(normalized)
        prompt = VoicePrompt(
            cond=mel,
            ref_audio_len=audio.shape[-1] // self.hop_length,
            rms=rms,
            ref_text=normalized,
            prompt_text=prompt_text,
            prompt_tokens=convert_char_to_pinyin([prompt_text])[0],
        )
        return PreparedVoice(
            content_hash="", ref_text=normalized.strip(), ref_seconds=clipped.seconds, payload=prompt
        )
