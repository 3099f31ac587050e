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

On CUDA the whole vocoder then becomes a CUDA graph per padded frame count
(:meth:`Vocoder.capture_graphs`).  Eager, it is ~100 small kernel launches whose timing
the CPU sets, and each new length still cost 0.4-8 ms on its first call on the H100
(allocator and library heuristics per shape).  Running the convolutions at a padded
length is exact only if every convolution sees zeros past the real end, as it does at
the exact length (its zero padding), so the static path masks the input of the
embedding and of every ConvNeXt block, zeroes the padded frames before the
overlap-add and divides by the window envelope of the real frames only.  Positions
past the end carry garbage that never reaches a kept sample; the caller crops.

For other heads, AdaLayerNorm backbones (or a window shorter than the FFT) the vocoder
runs as Vocos does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ishowtts_edge.engine.graphs import capture
from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)

#: Frame counts are padded up to a multiple of this for the inverse FFT (plans to warm up:
#: max_frames / FRAME_MULTIPLE).
FRAME_MULTIPLE = 64


def padded_frames(frames: int) -> int:
    return math.ceil(frames / FRAME_MULTIPLE) * FRAME_MULTIPLE


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    mel: torch.Tensor  # (1, n_mels, padded) float32, static input
    length: torch.Tensor  # () int64: real frames
    out: torch.Tensor  # (1, samples of the padded length) float32, static output


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
        backbone = vocos.backbone
        #: the masked padded-length path needs to know every layer: Vocos's plain backbone only
        self._static_ok = (
            self._padded_istft
            and type(backbone).__name__ == "VocosBackbone"
            and not getattr(backbone, "adanorm", True)
        )
        self._graphs: dict[int, _Graph] = {}
        self._pool: object | None = None

    @property
    def padded_istft(self) -> bool:
        """True when the inverse FFT runs at padded frame counts (plans warmed up front)."""
        return self._padded_istft

    @property
    def graphed_lengths(self) -> int:
        """How many padded frame counts replay a CUDA graph."""
        return len(self._graphs)

    @torch.inference_mode()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        """(1, n_mels, frames) float32 -> (1, samples) float32."""
        frames = mel.shape[-1]
        g = self._graphs.get(padded_frames(frames)) if mel.shape[0] == 1 else None
        if g is not None:
            g.mel[..., :frames].copy_(mel)
            g.length.fill_(frames)
            g.graph.replay()
            return g.out[:, : self.output_samples(frames)].clone()
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
        padded = padded_frames(frames)
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
        kept = slice(self._trim(), size - self._trim())
        y = F.fold(frames_t, output_size=(1, size), kernel_size=(1, win), stride=(1, hop))[:, 0, 0, kept]
        window_sq = istft.window.square().expand(1, frames, -1).transpose(1, 2)
        envelope = F.fold(window_sq, output_size=(1, size), kernel_size=(1, win), stride=(1, hop))[0, 0, 0, kept]
        return y / envelope

    def _trim(self) -> int:
        """Samples dropped at each end: (win - hop) / 2 for "same", n_fft / 2 for torch.istft(center=True)."""
        istft = self.vocos.head.istft
        return (istft.win_length - istft.hop_length) // 2 if istft.padding == "same" else istft.n_fft // 2

    def output_samples(self, frames: int) -> int:
        """Samples Vocos.decode gives for ``frames`` mel frames."""
        istft = self.vocos.head.istft
        return (frames - 1) * istft.hop_length + istft.win_length - 2 * self._trim()

    def padded_forward(self, mel: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """The vocoder at the padded frame count of ``mel``, exact for its first ``length`` frames.

        Shapes depend only on the padded count, so this can be captured as a CUDA graph;
        ``length`` is a device tensor read inside it.  Returns (1, samples of the padded
        count); the first ``output_samples(length)`` are what ``Vocos.decode`` gives at the exact
        length, the rest must be cropped.
        """
        backbone, head = self.vocos.backbone, self.vocos.head
        istft = head.istft
        padded = mel.shape[-1]
        real = (torch.arange(padded, device=mel.device) < length)[None, None, :]  # (1, 1, padded)
        zero = torch.zeros((), dtype=self.dtype, device=mel.device)
        with torch.backends.cudnn.flags(enabled=self.device.type != "cuda"):
            # where(), not a multiply: stale padding may hold inf/nan, and nan * 0 is nan
            x = backbone.embed(torch.where(real, mel.to(self.dtype), zero))
            x = backbone.norm(x.transpose(1, 2)).transpose(1, 2)
            for block in backbone.convnext:
                x = block(torch.where(real, x, zero))  # each depthwise conv must see zeros past the end
            features = backbone.final_layer_norm(x.transpose(1, 2)).float()
        x = head.out(features).transpose(1, 2)  # (1, n_fft + 2, padded)
        mag, phase = x.chunk(2, dim=1)
        mag = torch.clip(torch.exp(mag), max=1e2)
        spec = mag * (torch.cos(phase) + 1j * torch.sin(phase))
        frames_t = torch.fft.irfft(spec, istft.n_fft, dim=1, norm="backward") * istft.window[None, :, None]
        frames_t = torch.where(real, frames_t, 0.0)
        win, hop = istft.win_length, istft.hop_length
        size = (padded - 1) * hop + win
        y = F.fold(frames_t, output_size=(1, size), kernel_size=(1, win), stride=(1, hop))[:, 0, 0, self._trim():]
        window_sq = torch.where(real[0], istft.window.square()[:, None], 0.0)[None]  # (1, win, padded)
        envelope = F.fold(window_sq, output_size=(1, size), kernel_size=(1, win), stride=(1, hop))[0, 0, 0, self._trim():]
        # past the real end the envelope falls to 0: those samples are cropped, but must not be inf
        return y / torch.where(envelope > 1e-11, envelope, 1.0)

    @torch.inference_mode()
    def capture_graphs(self, max_frames: int) -> int:
        """One CUDA graph per padded frame count up to ``max_frames``; returns how many.

        A no-op (0) on CPU and for vocoders the static path does not cover; those run eager.
        """
        if not self._static_ok or self.device.type != "cuda":
            return 0
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        n_mels = self.vocos.backbone.embed.in_channels
        for padded in range(FRAME_MULTIPLE, padded_frames(max_frames) + 1, FRAME_MULTIPLE):
            if padded in self._graphs:
                continue
            mel = torch.zeros(1, n_mels, padded, device=self.device)
            length = torch.tensor(padded, dtype=torch.long, device=self.device)
            graph = torch.cuda.CUDAGraph()
            out = capture(graph, self._pool, self.device, warm=lambda: self.padded_forward(mel, length),
                          run=lambda: self.padded_forward(mel, length))
            self._graphs[padded] = _Graph(graph, mel, length, out)
        return len(self._graphs)

    def release_graphs(self) -> None:
        """Back to the eager path (A/B measurements; a failed capture)."""
        self._graphs.clear()
        self._pool = None

    @torch.inference_mode()
    def warm_fft_plans(self, max_frames: int) -> int:
        """Create the inverse-FFT plan of every padded frame count up to ``max_frames``; returns how many."""
        if not self._padded_istft or self.device.type != "cuda":
            return 0
        istft = self.vocos.head.istft
        bins = istft.n_fft // 2 + 1
        count = 0
        for padded in range(FRAME_MULTIPLE, padded_frames(max_frames) + 1, FRAME_MULTIPLE):
            spec = torch.zeros(1, bins, padded, dtype=torch.complex64, device=self.device)
            torch.fft.irfft(spec, istft.n_fft, dim=1, norm="backward")
            count += 1
        return count
