"""The engine's Vocos wrapper: the padded inverse FFT must give what Vocos itself gives."""

from __future__ import annotations

import pytest
import torch

from ishowtts_edge.engine.checkpoint import load_vocos
from ishowtts_edge.engine.vocoder import FRAME_MULTIPLE, Vocoder, padded_frames
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


@pytest.mark.parametrize("padding", ["center", "same"])
@pytest.mark.parametrize("frames", [2, 5, FRAME_MULTIPLE - 1, FRAME_MULTIPLE, FRAME_MULTIPLE + 1, 3 * FRAME_MULTIPLE + 7])
def test_padded_forward_matches_vocos_decode(tiny_bundle, frames: int, padding: str) -> None:
    """The static-shape path (what the CUDA graphs replay) at a padded length, garbage past the end."""
    vocos = load_vocos(tiny_bundle.vocoder_dir, CPU)
    vocos.head.istft.padding = padding
    vocoder = Vocoder(vocos, CPU, torch.float32)
    n_mels = vocos.backbone.embed.in_channels
    mel = torch.randn(1, n_mels, frames, generator=torch.Generator().manual_seed(frames))
    padded = padded_frames(frames)
    stale = torch.full((1, n_mels, padded), float("nan"))  # a graph's static buffer holds anything
    stale[..., frames + 1 :] = 1e4
    stale[..., :frames] = mel
    with torch.inference_mode():
        want = vocos.decode(mel)
        out = vocoder.padded_forward(stale, torch.tensor(frames))
    got = out[:, : vocoder.output_samples(frames)]
    assert vocoder.output_samples(frames) == want.shape[-1]
    assert out.shape[-1] >= want.shape[-1]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
    assert torch.isfinite(out).all()


def test_graphs_are_cuda_only(tiny_bundle) -> None:
    vocos = load_vocos(tiny_bundle.vocoder_dir, CPU)
    vocoder = Vocoder(vocos, CPU, torch.float32)
    assert vocoder.capture_graphs(512) == 0 and vocoder.graphed_lengths == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_replay_matches_vocos_decode_on_cuda(tiny_bundle) -> None:
    cuda = torch.device("cuda")
    vocos = load_vocos(tiny_bundle.vocoder_dir, cuda)
    reference = load_vocos(tiny_bundle.vocoder_dir, cuda)
    vocoder = Vocoder(vocos, cuda, torch.float32)
    eager = Vocoder(reference, cuda, torch.float32)  # never captured: the per-call path
    assert vocoder.capture_graphs(3 * FRAME_MULTIPLE) == 3
    for frames in (7, FRAME_MULTIPLE, 2 * FRAME_MULTIPLE + 5, 3 * FRAME_MULTIPLE):
        mel = torch.randn(1, vocos.backbone.embed.in_channels, frames, device=cuda)
        got = vocoder(mel)
        scale = float(got.abs().max())
        torch.testing.assert_close(got, eager(mel), rtol=0, atol=1e-5 * scale)
        # cuDNN's default TF32 convolutions (first seen on an H200: 4e-4 of full scale) would
        # measure TF32, not the graph: the reference runs its convolutions in full fp32.
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            want = reference.decode(mel)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
