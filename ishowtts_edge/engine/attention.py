"""Attention for padded (bucketed) sequences: one additive mask per step instead of one per block.

Upstream's ``AttnProcessor`` (f5_tts.model.modules, torch backend) takes a bool key
mask (b, n), expands it to (b, heads, n, n) and hands that to SDPA, which turns a bool
mask into an additive float one: at 896 frames, fp16, batch 2, a 51 MB tensor written
and read in every one of the 22 blocks, every step.  When the whole model is compiled
as one graph inductor shares that work between blocks; compiled block by block it
cannot (measured on an H100: 14 % of RTF).  Here the sampler builds the additive mask
once per step, (b, 1, 1, n), and SDPA broadcasts it.

The mask travels through ``DiTBlock`` -> ``Attention`` unchanged, so it arrives as a
:class:`BucketMask` (the bool key mask, still needed to zero padded rows as upstream
does, and the additive form).  Everything else is upstream's processor, line for line;
tests/test_engine_equivalence.py holds the padded path to upstream's unpadded one.

An additive mask rules out SDPA's FlashAttention kernel, so SDPA falls back to the
memory-efficient one.  ``kernel="flash"`` calls FlashAttention's variable-length entry
point instead, on the padded layout as it is: each batch row is one "sequence" of the
bucket's length, and ``seqused_k`` (the real frame count per row) keeps padded keys out,
which is the key padding mask without a mask tensor.  Shapes stay static (only the
lengths' values change), so it lives inside the CUDA graphs.  FlashAttention needs an
sm80+ GPU, fp16/bf16 and a PyTorch built with it (Jetson wheels may lack it):
:func:`flash_unavailable` checks all of that once, on the device, before it is used.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


KERNELS = ("sdpa", "flash")


class BucketMask(NamedTuple):
    keep: torch.Tensor  # (b, n) bool, True = a real frame
    bias: torch.Tensor | None  # (b, 1, 1, n) in the activations' dtype: 0 or -inf (kernel "sdpa")
    lengths: torch.Tensor | None = None  # (b,) int32 real frames per row (kernel "flash")
    cu_seqlens: torch.Tensor | None = None  # (b + 1,) int32: 0, n, 2n, ... (kernel "flash")


def bucket_mask(keep: torch.Tensor, dtype: torch.dtype, kernel: str = "sdpa") -> BucketMask:
    """The mask in the form ``kernel`` takes, built once per step instead of once per block.

    sdpa: what SDPA computes from a bool mask (0 where attended, -inf elsewhere).
    flash: the real length of each row and the rows' offsets in the flattened (b * n) layout.
    """
    if kernel == "flash":
        batch, n = keep.shape
        lengths = keep.sum(dim=-1, dtype=torch.int32)
        cu_seqlens = torch.arange(batch + 1, device=keep.device, dtype=torch.int32) * n
        return BucketMask(keep, None, lengths, cu_seqlens)
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))
    return BucketMask(keep, bias[:, None, None, :])


def flash_key_padded(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: BucketMask) -> torch.Tensor:
    """Attention of (b, heads, n, d) inputs over each row's first ``mask.lengths`` keys -> (b, n, heads * d)."""
    batch, heads, n, head_dim = query.shape

    def flat(t: torch.Tensor) -> torch.Tensor:  # (b, h, n, d) -> (b * n, h, d), the varlen layout
        return t.transpose(1, 2).reshape(batch * n, heads, head_dim)

    out = torch.ops.aten._flash_attention_forward(
        flat(query), flat(key), flat(value), mask.cu_seqlens, mask.cu_seqlens, n, n, 0.0, False, False,
        seqused_k=mask.lengths,
    )[0]
    return out.reshape(batch, n, heads * head_dim)


def flash_unavailable(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int) -> str | None:
    """Why the flash kernel cannot serve this model here, or None when it can.

    Runs it once on a small padded batch and compares with the SDPA path: a PyTorch built
    without FlashAttention, an unsupported GPU or a wrong result all end up as a reason.
    """
    if device.type != "cuda":
        return "needs CUDA"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16, not {str(dtype).removeprefix('torch.')}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"needs an sm80+ GPU, this one is sm{major}{minor}"
    if head_dim % 8 or head_dim > 256:
        return f"head dimension {head_dim} is not supported"
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        n = 192
        q, k, v = (torch.randn(2, heads, n, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
        keep = torch.arange(n, device=device)[None, :] < torch.tensor([[150], [n]], device=device)
        got = flash_key_padded(q, k, v, bucket_mask(keep, dtype, "flash"))
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bucket_mask(keep, dtype).bias)
        ref = ref.transpose(1, 2).reshape(2, n, heads * head_dim)
        torch.cuda.synchronize(device)
    except Exception as exc:  # no kernel for this GPU / build: RuntimeError from the dispatcher
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    if not err < 1e-2:  # fp16 rounding is ~1e-3; NaN fails too
        return f"result differs from SDPA (relative error {err:.2e})"
    return None


def fuse_qkv(attn: torch.nn.Module) -> None:
    """Give upstream's ``Attention`` one (3 inner, dim) projection ``to_qkv``; to_q/to_k/to_v become views of it.

    One GEMM with three times the columns instead of three: at a bucket's 2 x 896 rows
    each projection alone leaves part of a big GPU's multiprocessors idle, and ``x`` is
    read once.  No extra memory: the separate weights are slices of the fused one.
    """
    if getattr(attn, "to_qkv", None) is not None:
        return
    projections = (attn.to_q, attn.to_k, attn.to_v)
    if any(p.bias is None for p in projections) or len({(p.weight.dtype, p.weight.device) for p in projections}) != 1:
        return
    with torch.no_grad():
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections])
    fused = torch.nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    fused.weight = torch.nn.Parameter(weight, requires_grad=False)
    fused.bias = torch.nn.Parameter(bias, requires_grad=False)
    start = 0
    for p in projections:
        rows = p.weight.shape[0]
        p.weight = torch.nn.Parameter(weight[start : start + rows], requires_grad=False)
        p.bias = torch.nn.Parameter(bias[start : start + rows], requires_grad=False)
        start += rows
    attn.to_qkv = fused


class BucketAttnProcessor:
    """upstream AttnProcessor(attn_backend="torch", attn_mask_enabled=True) taking a BucketMask."""

    def __init__(self, pe_attn_head: int | None = None, kernel: str = "sdpa") -> None:
        if kernel not in KERNELS:
            raise ValueError(f"attention kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
        self.pe_attn_head = pe_attn_head
        self.kernel = kernel
        self.attn_backend = "torch"
        self.attn_mask_enabled = True

    def __call__(self, attn, x: torch.Tensor, mask: BucketMask | torch.Tensor | None = None, rope=None) -> torch.Tensor:
        from x_transformers.x_transformers import apply_rotary_pos_emb

        if isinstance(mask, torch.Tensor):  # a plain bool mask (a caller other than the sampler)
            mask = bucket_mask(mask, x.dtype, self.kernel)
        batch_size = x.shape[0]
        qkv = getattr(attn, "to_qkv", None)
        if qkv is not None:  # fuse_qkv(): one GEMM
            query, key, value = qkv(x).chunk(3, dim=-1)
        else:
            query = attn.to_q(x)
            key = attn.to_k(x)
            value = attn.to_v(x)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.q_norm is not None:
            query = attn.q_norm(query)
        if attn.k_norm is not None:
            key = attn.k_norm(key)
        if rope is not None:
            freqs, xpos_scale = rope
            q_xpos_scale, k_xpos_scale = (xpos_scale, xpos_scale**-1.0) if xpos_scale is not None else (1.0, 1.0)
            if self.pe_attn_head is not None:
                pn = self.pe_attn_head
                query[:, :pn, :, :] = apply_rotary_pos_emb(query[:, :pn, :, :], freqs, q_xpos_scale)
                key[:, :pn, :, :] = apply_rotary_pos_emb(key[:, :pn, :, :], freqs, k_xpos_scale)
            else:
                query = apply_rotary_pos_emb(query, freqs, q_xpos_scale)
                key = apply_rotary_pos_emb(key, freqs, k_xpos_scale)
        if mask is not None and mask.lengths is not None:
            x = flash_key_padded(query, key, value, mask)
        else:
            bias = mask.bias if mask is not None else None
            x = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
            x = x.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        x = x.to(query.dtype)
        x = attn.to_out[0](x)
        x = attn.to_out[1](x)
        if mask is not None:
            x = x.masked_fill(~mask.keep.unsqueeze(-1), 0.0)
        return x
