"""Vocos as the engine runs it: FP16 backbone, float32 head, and no per-length set-up cost.

Every request produces a different number of mel frames, so anything the GPU libraries
plan per shape is paid again on the first request of each new length.  Two such costs
were measured on an H100:

* cuDNN builds a conv1d plan per input length (200-260 ms the first time, 3.6 ms after).
  PyTorch's own CUDA conv kernels need no plan and ran the Vocos backbone as fast
  (3.3 ms), so cuDNN is off for the vocoder.
* cuFFT builds a plan per transform shape, and Vocos's ISTFT runs one inverse real FFT
  of ``n_fft`` points per frame, batched over the frames: a new frame count is a new
  plan.  The transforms are independent per frame, so this module pads the spectrum
  to a multiple of :data:`FRAME_MULTIPLE` frames, transforms, and drops the padding
  before the overlap-add, which stays at the exact length (what ``torch.istft`` with
  ``center=True``, the released charactr/vocos-mel-24khz's setting, or Vocos's own
  "same" ISTFT compute).  Warm-up then creates every plan a request can need.

For other heads (or a window shorter than the FFT) the head runs as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Frame counts are padded up to a multiple of this for the inverse FFT (plans to warm up:
#: max_frames / FRAME_MULTIPLE).
FRAME_MULTIPLE = 64


class Vocoder:
    def __init__(self, vocos: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.vocos = vocos
        self.device = device
        self.dtype = dtype
        if dtype != torch.float32:
            vocos.backbone.to(dtype)  # the head (exp, phase, ISTFT) stays float32
        head = vocos.head
        istft = getattr(head, "istft", None)
        self._padded_istft = (
            type(head).__name__ == "ISTFTHead"
            and hasattr(head, "out")
            and getattr(istft, "padding", None) in ("same", "center")
            and getattr(istft, "win_length", None) == getattr(istft, "n_fft", 0)
        )

    @property
    def padded_istft(self) -> bool:
        """True when the inverse FFT runs at padded frame counts (plans warmed up front)."""
        return self._padded_istft

    @torch.inference_mode()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        """(1, n_mels, frames) float32 -> (1, samples) float32."""
        with torch.backends.cudnn.flags(enabled=self.device.type != "cuda"):
            features = self.vocos.backbone(mel.to(self.dtype)).float()
            if not self._padded_istft:
                return self.vocos.head(features)
            return self._istft_head(features)

    def _istft_head(self, features: torch.Tensor) -> torch.Tensor:
        """Vocos ISTFTHead.forward + its ISTFT.forward, with the FFT at a padded length."""
        head = self.vocos.head
        istft = head.istft
        x = head.out(features).transpose(1, 2)  # (B, n_fft + 2, T)
        frames = x.shape[-1]
        padded = math.ceil(frames / FRAME_MULTIPLE) * FRAME_MULTIPLE
        x = F.pad(x, (0, padded - frames))  # padded frames are transformed, then dropped
        mag, phase = x.chunk(2, dim=1)
        mag = torch.clip(torch.exp(mag), max=1e2)
        spec = mag * (torch.cos(phase) + 1j * torch.sin(phase))
        frames_t = torch.fft.irfft(spec, istft.n_fft, dim=1, norm="backward")[:, :, :frames]
        return self._overlap_add(frames_t * istft.window[None, :, None], frames)

    def _overlap_add(self, frames_t: torch.Tensor, frames: int) -> torch.Tensor:
        """Overlap-add and window normalisation as torch.istft(center=True) / Vocos's "same" ISTFT."""
        istft = self.vocos.head.istft
        win, hop = istft.win_length, istft.hop_length
        size = (frames - 1) * hop + win
        # "same": (win - hop) / 2 trimmed at both ends; "center": n_fft / 2 (torch.istft, length=None)
        trim = (win - hop) // 2 if istft.padding == "same" else istft.n_fft // 2
        kept = slice(trim, size - trim)
        y = F.fold(frames_t, output_size=(1, size), kernel_size=(1, win), stride=(1, hop))[:, 0, 0, kept]
        window_sq = istft.window.square().expand(1, frames, -1).transpose(1, 2)
        envelope = F.fold(window_sq, output_size=(1, size), kernel_size=(1, win), stride=(1, hop))[0, 0, 0, kept]
        return y / envelope

    @torch.inference_mode()
    def warm_fft_plans(self, max_frames: int) -> int:
        """Create the inverse-FFT plan of every padded frame count up to ``max_frames``; returns how many."""
        if not self._padded_istft or self.device.type != "cuda":
            return 0
        istft = self.vocos.head.istft
        bins = istft.n_fft // 2 + 1
        count = 0
        for padded in range(FRAME_MULTIPLE, math.ceil(max_frames / FRAME_MULTIPLE) * FRAME_MULTIPLE + 1, FRAME_MULTIPLE):
            spec = torch.zeros(1, bins, padded, dtype=torch.complex64, device=self.device)
            torch.fft.irfft(spec, istft.n_fft, dim=1, norm="backward")
            count += 1
        return count
