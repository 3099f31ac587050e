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
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class BucketMask(NamedTuple):
    keep: torch.Tensor  # (b, n) bool, True = a real frame
    bias: torch.Tensor  # (b, 1, 1, n) in the activations' dtype: 0 or -inf


def bucket_mask(keep: torch.Tensor, dtype: torch.dtype) -> BucketMask:
    """What SDPA computes from a bool mask (0 where attended, -inf elsewhere), once."""
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))
    return BucketMask(keep, bias[:, None, None, :])


class BucketAttnProcessor:
    """upstream AttnProcessor(attn_backend="torch", attn_mask_enabled=True) taking a BucketMask."""

    def __init__(self, pe_attn_head: int | None = None) -> None:
        self.pe_attn_head = pe_attn_head
        self.attn_backend = "torch"
        self.attn_mask_enabled = True

    def __call__(self, attn, x: torch.Tensor, mask: BucketMask | torch.Tensor | None = None, rope=None) -> torch.Tensor:
        from x_transformers.x_transformers import apply_rotary_pos_emb

        if isinstance(mask, torch.Tensor):  # a plain bool mask (a caller other than the sampler)
            mask = bucket_mask(mask, x.dtype)
        batch_size = x.shape[0]
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
        bias = mask.bias if mask is not None else None
        x = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
        x = x.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        x = x.to(query.dtype)
        x = attn.to_out[0](x)
        x = attn.to_out[1](x)
        if mask is not None:
            x = x.masked_fill(~mask.keep.unsqueeze(-1), 0.0)
        return x
