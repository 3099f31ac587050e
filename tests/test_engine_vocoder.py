"""The engine's Vocos wrapper: the padded inverse FFT must give what Vocos itself gives."""

from __future__ import annotations

import pytest
import torch

from ishowtts_edge.engine.checkpoint import load_vocos
from ishowtts_edge.engine.vocoder import FRAME_MULTIPLE, Vocoder
from tests.engine_support import tiny_bundle  # noqa: F401 (fixture)

CPU = torch.device("cpu")


@pytest.mark.parametrize("padding", ["center", "same"])  # center: the released vocos-mel-24khz
@pytest.mark.parametrize("frames", [2, 3, FRAME_MULTIPLE - 1, FRAME_MULTIPLE, FRAME_MULTIPLE + 1, 3 * FRAME_MULTIPLE + 7])
def test_padded_istft_matches_vocos_decode(tiny_bundle, frames: int, padding: str) -> None:
    vocos = load_vocos(tiny_bundle.vocoder_dir, CPU)
    vocos.head.istft.padding = padding
    vocoder = Vocoder(vocos, CPU, torch.float32)
    assert vocoder.padded_istft
    mel = torch.randn(1, vocos.backbone.embed.in_channels, frames, generator=torch.Generator().manual_seed(frames))
    with torch.inference_mode():
        want = vocos.decode(mel)
    got = vocoder(mel)
    hop = vocos.head.istft.hop_length
    assert got.shape == want.shape == (1, (frames if padding == "same" else frames - 1) * hop)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_other_heads_run_unchanged(tiny_bundle) -> None:
    vocos = load_vocos(tiny_bundle.vocoder_dir, CPU)
    vocos.head.istft.win_length = vocos.head.istft.n_fft // 2  # a window shorter than the FFT: not ours to pad
    vocos.head.istft.window = torch.hann_window(vocos.head.istft.win_length)
    vocoder = Vocoder(vocos, CPU, torch.float32)
    assert not vocoder.padded_istft
    mel = torch.randn(1, vocos.backbone.embed.in_channels, 50)
    with torch.inference_mode():
        want = vocos.decode(mel)
    torch.testing.assert_close(vocoder(mel), want, rtol=0, atol=0)
    assert vocoder.warm_fft_plans(2560) == 0
