"""The padded-attention kernels: the mask forms, the flash check's refusals, and (GPU) flash vs SDPA."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ishowtts_edge.config import EngineConfig, VoiceConfig
from ishowtts_edge.engine.attention import BucketAttnProcessor, bucket_mask, flash_key_padded, flash_unavailable, fuse_qkv
from ishowtts_edge.engine.loader import load_engine
from ishowtts_edge.protocol import SynthesizeParams
from tests.engine_support import engine_settings, tiny_bundle  # noqa: F401  (fixture)

CUDA = torch.cuda.is_available()


def test_bucket_mask_forms() -> None:
    keep = torch.arange(6)[None, :] < torch.tensor([[4], [6]])
    sdpa = bucket_mask(keep, torch.float16)
    assert sdpa.bias.shape == (2, 1, 1, 6) and sdpa.bias.dtype == torch.float16
    assert torch.equal(torch.isinf(sdpa.bias[:, 0, 0]), ~keep) and sdpa.lengths is None
    flash = bucket_mask(keep, torch.float16, "flash")
    assert flash.bias is None
    assert flash.lengths.tolist() == [4, 6] and flash.lengths.dtype == torch.int32
    assert flash.cu_seqlens.tolist() == [0, 6, 12] and flash.cu_seqlens.dtype == torch.int32


def test_unknown_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="attention kernel 'xformers'"):
        BucketAttnProcessor(None, "xformers")
    with pytest.raises(ValueError):
        EngineConfig(attention="xformers")


@pytest.mark.parametrize(
    ("device", "dtype", "heads", "head_dim", "reason"),
    [
        ("cpu", torch.float16, 16, 64, "needs CUDA"),
        ("cuda", torch.float32, 16, 64, "needs float16 or bfloat16, not float32"),
    ],
)
def test_flash_check_names_the_reason(device, dtype, heads, head_dim, reason) -> None:
    # Both refusals come before anything touches a GPU, so they hold on a CPU-only machine too.
    assert flash_unavailable(torch.device(device), dtype, heads, head_dim) == reason


def test_engine_asked_for_flash_without_it_serves_on_sdpa(tiny_bundle, tmp_path: Path, caplog) -> None:  # noqa: F811
    """engine.attention = flash where it cannot run: a warning, sdpa, and the reason in describe()."""
    caplog.set_level(logging.INFO, logger="ishowtts_edge")
    voices = {"v": VoiceConfig(dir=tiny_bundle.voice_dir)}
    engine = load_engine(engine_settings(tiny_bundle, tmp_path, voices, attention="flash", pad_to_buckets="always",
                                    length_buckets=[256, 512], warmup=False))
    described = engine.describe()
    assert described["attention"] == "sdpa"
    assert described["attention_note"] == "flash unavailable: needs CUDA"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "engine.attention" in r.getMessage()]
    assert len(warnings) == 1 and "needs CUDA" in warnings[0].getMessage()
    assert all(b.attn.processor.kernel == "sdpa" for b in engine.model.transformer.transformer_blocks)
    result = engine.synthesize(SynthesizeParams(text="Hello there.", seed=1))
    assert result.audio_seconds > 0


@pytest.mark.skipif(not CUDA, reason="FlashAttention needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("n", "lengths"), [(256, (200, 200)), (384, (384, 384)), (896, (610, 610)), (130, (7, 130))])
def test_flash_matches_masked_sdpa_on_cuda(dtype, n, lengths) -> None:
    assert flash_unavailable(torch.device("cuda"), dtype, 16, 64) is None
    gen = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(2, 16, n, 64, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    keep = torch.arange(n, device="cuda")[None, :] < torch.tensor(lengths, device="cuda")[:, None]
    got = flash_key_padded(q, k, v, bucket_mask(keep, dtype, "flash"))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=keep[:, None, None, :])
    ref = ref.transpose(1, 2).reshape(2, n, 16 * 64)
    assert torch.isfinite(got).all()
    err = ((got.double() - ref).norm() / ref.norm()).item()
    assert err < (2e-3 if dtype == torch.float16 else 1e-2), err


@pytest.mark.skipif(not CUDA, reason="FlashAttention needs a GPU")
def test_sampler_with_flash_matches_sdpa_on_cuda(tiny_bundle) -> None:  # noqa: F811
    """The whole padded sampling loop (eager) with either kernel: the same mel within fp16 rounding."""
    from ishowtts_edge.engine.checkpoint import load_model, read_arch
    from ishowtts_edge.engine.sampler import FlowSampler

    outs = {}
    for kernel in ("sdpa", "flash"):
        model = load_model(read_arch(tiny_bundle.arch_path), tiny_bundle.checkpoint, tiny_bundle.vocab,
                           torch.device("cuda"), torch.float16)
        sampler = FlowSampler(model, buckets=[256], attention=kernel)
        assert sampler.attention == kernel
        gen = torch.Generator().manual_seed(0)
        cond = torch.randn(1, 120, 100, generator=gen).to("cuda", torch.float16)
        text = torch.randint(0, 2000, (1, 50), generator=gen).cuda()
        outs[kernel] = sampler.sample(cond, text, 230, steps=7, cfg_strength=2.0, sway_sampling_coef=-1.0,
                                      generator=torch.Generator(device="cuda").manual_seed(5)).float()
    assert torch.isfinite(outs["flash"]).all()
    torch.testing.assert_close(outs["flash"], outs["sdpa"], rtol=0, atol=2e-2)


def test_fused_qkv_projects_like_the_three_projections_and_shares_their_memory() -> None:
    from ishowtts_edge.engine.upstream import ensure_f5_model_importable

    ensure_f5_model_importable()
    from f5_tts.model.modules import Attention, AttnProcessor

    torch.manual_seed(0)
    attn = Attention(AttnProcessor(), dim=64, heads=4, dim_head=16)
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        want = [attn.to_q(x), attn.to_k(x), attn.to_v(x)]
        fuse_qkv(attn)
        got = attn.to_qkv(x).chunk(3, dim=-1)
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w)
        # the separate projections still work and are slices of the fused weight: no copy kept
        torch.testing.assert_close(attn.to_k(x), want[1])
    assert attn.to_k.weight.data_ptr() == attn.to_qkv.weight.data_ptr() + 64 * 64 * attn.to_qkv.weight.element_size()
    fused = attn.to_qkv
    fuse_qkv(attn)  # idempotent
    assert attn.to_qkv is fused
