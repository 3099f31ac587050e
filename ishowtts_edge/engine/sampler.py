"""Flow-matching sampling: upstream CFM.sample for one request, made compile-friendly.

This is ``CFM.sample`` with batch 1, ``odeint(method="euler")`` and EPSS timesteps,
unrolled so that

* the guided (cond + uncond) DiT forward is one batch-2 call with the text embeddings
  computed once per request, a pure tensor function that torch.compile can capture
  without graph breaks (upstream's cache lives in a threading.local);
* sequences can be padded up to a few fixed lengths ("buckets") so a compiled graph
  never sees a new shape after warm-up.  Padding is exact only when the padded frames
  cannot influence the real ones: the attention must mask them (we switch on the
  processors' ``attn_mask_enabled`` and pass a mask), the conv position embedding
  already zeroes masked frames, and the text convolutions must zero filler tokens,
  which only models with ``text_mask_padding: true`` do (F5TTS_v1_*).  For other
  models :attr:`FlowSampler.exact_padding` is False and no padding is done;
* each ODE step can be followed by a hook (the clock emulation slows steps down);
* on that padded (serving) path, work that does not change between steps is done once
  per request (:meth:`FlowSampler.prepare`): every block's AdaLN modulation for every
  step's time (one GEMM of all the steps' rows per block instead of one per step: these
  weights are 41 % of the DiT's, read once instead of NFE times), the input projection
  of the reference mel and the text, the attention mask's form and the rotary table.
  The cond and uncond halves then share one input projection of ``x`` and one
  position-embedding conv call (batch 2), and each block makes one fused QKV
  projection (:data:`FAST_PATH_PARTS`).  The unpadded path stays upstream's forward,
  bit for bit.

tests/test_engine_equivalence.py holds it to upstream within float noise.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ishowtts_edge.engine.attention import BucketAttnProcessor, BucketMask, bucket_mask, fuse_qkv
from ishowtts_edge.engine.graphs import GraphedLoops
from ishowtts_edge.engine.upstream import ensure_f5_model_importable
from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)

#: CFM.sample's cap on the total frame count.
MAX_DURATION = 65536

#: The padded path's rewrites that can be switched off one at a time (read when a FlowSampler is
#: built; scripts/engine_ab.py --without measures each): "fused_qkv" (one projection for q, k, v),
#: "time_once" (AdaLN modulations for all steps once per request).
FAST_PATH_PARTS = {"fused_qkv": True, "time_once": True}


def epss_timesteps(steps: int, sway_sampling_coef: float | None, device, dtype) -> torch.Tensor:
    ensure_f5_model_importable()
    from f5_tts.model.utils import get_epss_timesteps

    t = get_epss_timesteps(steps, device=device, dtype=dtype)
    if sway_sampling_coef is not None:
        t = t + sway_sampling_coef * (torch.cos(torch.pi / 2 * t) - 1 + t)
    return t


def compile_counters() -> dict[str, int]:
    """dynamo's running totals: compiled graphs and frames (a recompile adds a graph)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # pragma: no cover - torch without dynamo
        return {"graphs": 0, "frames": 0}
    return {"graphs": int(counters["stats"]["unique_graphs"]), "frames": int(counters["frames"]["ok"])}


class FlowSampler:
    """Runs the ODE for one prompt; owns the compiled forward and the length buckets."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        buckets: list[int] | None = None,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        cuda_graphs: bool = False,
        dynamic: bool = False,
        scope: str = "model",
        attention: str = "sdpa",
    ) -> None:
        self.model = model
        self.transformer = model.transformer
        package = ensure_f5_model_importable()
        self.is_dit = isinstance(self.transformer, package.DiT)
        self.exact_padding = self.is_dit and bool(getattr(self.transformer.text_embed, "mask_padding", False))
        self.buckets = sorted(set(buckets or [])) if self.exact_padding else []
        if buckets and not self.buckets:
            reason = "only DiT has the masked path" if not self.is_dit else "text_mask_padding is false"
            log.warning(
                "length buckets disabled: padding would change this model's output %s",
                kv(backbone=type(self.transformer).__name__, reason=reason),
            )
        #: Padded frames must be masked out of attention (upstream passes no mask at batch 1).  Its
        #: torch processor is swapped for one taking a per-step additive mask (engine/attention.py);
        #: another backend (flash_attn) keeps its own, with masking switched on.
        self._bucket_attention = False
        #: The kernel behind the padded attention ("sdpa" or "flash", engine/attention.py); None
        #: where no bucket mask is used.
        self.attention: str | None = None
        if self.buckets:
            for block in self.transformer.transformer_blocks:
                processor = block.attn.processor
                if getattr(processor, "attn_backend", None) == "torch":
                    block.attn.processor = BucketAttnProcessor(processor.pe_attn_head, attention)
                    self._bucket_attention = True
                    self.attention = attention
                else:
                    processor.attn_mask_enabled = True
        #: The padded path's rewrites in use (FAST_PATH_PARTS at construction); empty without buckets.
        self.parts = {k for k, on in FAST_PATH_PARTS.items() if on} if self.buckets else set()
        if "fused_qkv" in self.parts and self._bucket_attention:
            for block in self.transformer.transformer_blocks:
                fuse_qkv(block.attn)
        self.compile_mode = compile_mode
        self._forward: Callable[..., torch.Tensor] = self._guided_dit
        #: One step of the padded path on a request's prepared inputs (see prepare()).
        self._step: Callable[..., torch.Tensor] = self._padded_step
        #: What the forward runs: the embedding, the blocks and the output head, eager or (scope
        #: "blocks") each compiled on its own.
        self._stages = self._eager_stages()
        self.compiled = False
        self.compile_backend = compile_backend
        self.compile_scope = scope
        if compile_mode is not None and self.is_dit:
            # With buckets: dynamic=True compiles once for every bucket (the CUDA graphs then fix each
            # shape); dynamic=False compiles a specialised, separately autotuned graph per bucket.
            # Without buckets every new length would recompile, so dynamo decides (None).
            options = {"mode": compile_mode} if compile_backend == "inductor" else {}
            dynamic = dynamic if self.buckets else None

            def compiled(fn):
                return torch.compile(fn, backend=compile_backend, dynamic=dynamic, **options)

            if scope == "blocks":
                # The blocks share their code and, with parameters as graph inputs (dynamo's
                # default since torch 2.5), one guard set: the first block's compile serves all.
                # Embedding and output head are small graphs of their own (left eager, their
                # unfused kernels cost ~3 % of RTF on an H100: docs/benchmarks.md).
                eager = self._eager_stages()
                self._stages = _Stages(compiled(eager.embed), [compiled(b) for b in eager.blocks], compiled(eager.head))
            elif self.buckets:
                self._step = compiled(self._padded_step)
            else:
                self._forward = compiled(self._guided_dit)
            self.compiled = True
        elif compile_mode is not None:
            log.warning("torch.compile skipped: only the DiT backbone has a compiled path %s",
                        kv(backbone=type(self.transformer).__name__))
        # Whole-loop CUDA graphs need fixed shapes, so only with buckets (see graphs.py); zipvoice-style
        # average upsampling of the text reads lengths back to the host, which a graph cannot hold.
        graphable = self.buckets and self.is_dit and not getattr(self.transformer.text_embed, "average_upsampling", False)
        self.graphs = self._graphed_loops() if cuda_graphs and graphable else None

    def _graphed_loops(self) -> GraphedLoops:
        return GraphedLoops(self.prepare, lambda x, prepared, i: self._step(x, *prepared.step_inputs(i)),
                            self._graph_text_embed)

    def disable_compile(self) -> None:
        self._forward = self._guided_dit
        self._step = self._padded_step
        self._stages = self._eager_stages()
        self.compiled = False
        if self.graphs is not None:
            self.graphs = self._graphed_loops()

    def bucket_for(self, frames: int) -> int | None:
        """The smallest bucket holding ``frames``; None = run at the exact length."""
        index = bisect.bisect_left(self.buckets, frames)
        return self.buckets[index] if index < len(self.buckets) else None

    # -- the transformer ----------------------------------------------------------------------

    def _guided_dit(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text_cond: torch.Tensor,
        text_uncond: torch.Tensor,
        time: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """DiT.forward(cfg_infer=True) with precomputed text embeddings -> (2, n, mel).

        Padded (``mask`` given, buckets on): prepare() for this one time, then one step.
        """
        if mask is not None and self.buckets:
            prepared = self.prepare(cond, text_cond, text_uncond, time.reshape(1), mask)
            return self._step(x, *prepared.step_inputs(0))
        return self._guided(self._stages, x, cond, text_cond, text_uncond, time, mask)

    def _eager_dit(self, x, cond, text_cond, text_uncond, time, mask) -> torch.Tensor:
        """upstream's forward, uncompiled: lengths beyond the buckets must not reach compiled code."""
        stages = _Stages(self._embed, list(self.transformer.transformer_blocks), self._head)
        return self._guided(stages, x, cond, text_cond, text_uncond, time, mask)

    def _eager_stages(self) -> "_Stages":
        if not self.is_dit:
            return _Stages(self._embed, [], self._head)
        if self.buckets:
            blocks = [_ModulatedBlock(block) for block in self.transformer.transformer_blocks]
            return _Stages(self._padded_embed, blocks, self._padded_head)
        return _Stages(self._embed, list(self.transformer.transformer_blocks), self._head)

    @staticmethod
    def _guided(stages: "_Stages", x, cond, text_cond, text_uncond, time, mask) -> torch.Tensor:
        h, t, mask, rope = stages.embed(x, cond, text_cond, text_uncond, time, mask)
        residual = h
        for block in stages.blocks:
            h = block(h, t, mask=mask, rope=rope)
        return stages.head(h, residual, t)

    def _embed(self, x, cond, text_cond, text_uncond, time, mask):
        """Time and input embeddings of the cond and uncond halves, as one batch of 2; rotary table."""
        tr = self.transformer
        batch, seq_len = x.shape[0], x.shape[1]
        t = tr.time_embed(time.repeat(batch))
        x_cond = tr.input_embed(x, cond, text_cond, drop_audio_cond=False, audio_mask=mask)
        x_uncond = tr.input_embed(x, cond, text_uncond, drop_audio_cond=True, audio_mask=mask)
        h = torch.cat((x_cond, x_uncond), dim=0)
        t = torch.cat((t, t), dim=0)
        if mask is not None:
            mask = torch.cat((mask, mask), dim=0)
            if self._bucket_attention:  # the kernel's form once per step, not once per block
                mask = bucket_mask(mask, h.dtype, self.attention)
        return h, t, mask, tr.rotary_embed.forward_from_seq_len(seq_len)

    def _graph_text_embed(self, ids: torch.Tensor, drop_text: bool) -> torch.Tensor:
        """Upstream's text embedding of ids already padded with -1 to the sequence length (what it pads to)."""
        return self.transformer.text_embed(ids, seq_len=ids.shape[1], drop_text=drop_text)

    def _head(self, h, residual, t):
        tr = self.transformer
        if tr.long_skip_connection is not None:
            h = tr.long_skip_connection(torch.cat((h, residual), dim=-1))
        return tr.proj_out(tr.norm_out(h, t))

    # -- the padded (serving) path: per-request preparation, then steps ----------------------------

    def time_modulations(self, times: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each block's AdaLN output and the final norm's for ``times`` (s,): ([(s, 6 dim)] * depth, (s, 2 dim)).

        upstream computes ``linear(silu(time_embed(t)))`` inside every block, every step, for
        both CFG halves; it depends on nothing but t.
        """
        tr = self.transformer
        emb = F.silu(tr.time_embed(times))
        return [block.attn_norm.linear(emb) for block in tr.transformer_blocks], tr.norm_out.linear(emb)

    def prepare(
        self,
        cond: torch.Tensor,
        text_cond: torch.Tensor,
        text_uncond: torch.Tensor,
        times: torch.Tensor,
        keep: torch.Tensor,
    ) -> "_Prepared":
        """What every step of one padded request shares: ``cond`` (1, n, mel) padded, text embeddings
        (1, n, text_dim), ``times`` (steps,) in the model dtype, ``keep`` (1, n) bool real frames."""
        tr = self.transformer
        proj = tr.input_embed.proj
        mel = cond.shape[-1]
        # upstream: proj(cat(x, cond, text)) per half, the uncond half with cond zeroed. The
        # cond and text columns do not change between steps.
        fixed = torch.cat((torch.cat((cond, torch.zeros_like(cond))), torch.cat((text_cond, text_uncond))), dim=-1)
        base = F.linear(fixed, proj.weight[:, mel:], proj.bias)
        keep2 = torch.cat((keep, keep))
        attn_mask = bucket_mask(keep2, base.dtype, self.attention) if self._bucket_attention else keep2
        rope = tr.rotary_embed.forward_from_seq_len(cond.shape[1])
        if "time_once" in self.parts:
            mods, head = self.time_modulations(times)
        else:
            mods, head = None, None
        return _Prepared(base, keep2, attn_mask, rope, times, mods, head, self.time_modulations)

    def _padded_step(self, x, base, keep, attn_mask, rope, mods, head) -> torch.Tensor:
        """One guided step (cond and uncond halves) on prepared inputs -> (2, n, mel)."""
        stages = self._stages
        h = stages.embed(x, base, keep)
        residual = h
        for block, mod in zip(stages.blocks, mods):
            h = block(h, mod, mask=attn_mask, rope=rope)
        return stages.head(h, residual, head)

    def _padded_embed(self, x: torch.Tensor, base: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """upstream InputEmbedding of both halves: x's projection (shared) + the prepared part, then the
        conv position embedding (masked frames zeroed before and after each conv, as upstream)."""
        tr = self.transformer
        h = F.linear(x, tr.input_embed.proj.weight[:, : x.shape[-1]]) + base
        return tr.input_embed.conv_pos_embed(h, mask=keep) + h

    def _padded_head(self, h, residual, mod):
        """upstream long skip + AdaLayerNorm_Final + proj_out, with the norm's modulation given."""
        tr = self.transformer
        if tr.long_skip_connection is not None:
            h = tr.long_skip_connection(torch.cat((h, residual), dim=-1))
        scale, shift = torch.chunk(mod, 2, dim=1)
        return tr.proj_out(tr.norm_out.norm(h) * (1 + scale)[:, None, :] + shift[:, None, :])

    # -- sampling -----------------------------------------------------------------------------

    @torch.inference_mode()
    def sample(
        self,
        cond: torch.Tensor,
        text: torch.Tensor,
        duration: int,
        *,
        steps: int,
        cfg_strength: float,
        sway_sampling_coef: float | None,
        generator: torch.Generator | None,
        after_step: Callable[[float], None] | None = None,
        cancel: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """``cond`` (1, n_ref, mel) in the model dtype, ``text`` (1, nt) ids -> (1, duration, mel).

        ``cancel`` runs before each ODE step and raises to abandon the request.
        """
        device, dtype = cond.device, cond.dtype
        ref_frames = cond.shape[1]
        duration = max(max(int(text.shape[1]), ref_frames) + 1, int(duration))
        duration = min(duration, MAX_DURATION)
        padded = self.bucket_for(duration) if self.buckets else None
        length = padded or duration

        y = torch.randn(duration, cond.shape[-1], device=device, dtype=dtype, generator=generator).unsqueeze(0)
        step_cond = F.pad(cond, (0, 0, 0, length - ref_frames), value=0.0)
        mask = None
        if padded is not None:
            y = F.pad(y, (0, 0, 0, length - duration), value=0.0)
            mask = (torch.arange(length, device=device) < duration).unsqueeze(0)

        t = epss_timesteps(steps, sway_sampling_coef, device, dtype)
        graphed = None
        if self.graphs is not None and padded is not None and after_step is None and cfg_strength >= 1e-5:
            graphed = self.graphs.run(y, step_cond, pad_text_ids(text, length), mask, t, cfg_strength)
        if graphed is not None:
            y = graphed
        velocity = None if graphed is not None else self._velocity_fn(step_cond, text, length, cfg_strength, mask, t)
        timing = after_step is not None
        for i in range(0 if graphed is not None else len(t) - 1):
            if cancel is not None:
                cancel()
            started = time.perf_counter() if timing else 0.0
            t0, t1 = t[i], t[i + 1]
            # torchdiffeq casts t to y's (real) dtype before calling the model; dt stays in t's dtype
            y = y + (t1 - t0) * velocity(i, t0.to(y.dtype), y)
            if timing:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                after_step(time.perf_counter() - started)
        if not self.is_dit:
            self.transformer.clear_cache()

        out = y[:, :duration]
        cond_mask = (torch.arange(duration, device=device) < ref_frames).view(1, -1, 1)
        return torch.where(cond_mask, F.pad(cond, (0, 0, 0, duration - ref_frames)), out)

    def _velocity_fn(
        self, step_cond: torch.Tensor, text: torch.Tensor, length: int, cfg_strength: float, mask, t: torch.Tensor
    ) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
        """(step index, time, x) -> velocity, for the step-by-step path."""
        tr = self.transformer
        if not self.is_dit:  # UNetT / MMDiT: upstream's own forward, eager, exact lengths
            def generic(_i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                if cfg_strength < 1e-5:
                    return tr(x=x, cond=step_cond, text=text, time=t, mask=None, cache=True)
                pred, null = torch.chunk(
                    tr(x=x, cond=step_cond, text=text, time=t, mask=None, cfg_infer=True, cache=True), 2, dim=0
                )
                return pred + (pred - null) * cfg_strength

            return generic

        text_cond = tr.text_embed(text, seq_len=length, drop_text=False)
        if cfg_strength < 1e-5 and not self.compiled and mask is None:
            # upstream's unguided call, at batch 1 (exact)
            def unguided(_i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                return _dit_single(tr, x, step_cond, text_cond, t, mask)

            return unguided

        text_uncond = tr.text_embed(text, seq_len=length, drop_text=True)
        if mask is not None:  # padded: the request's shared work once, then steps
            prepared = self.prepare(step_cond, text_cond, text_uncond, t[:-1], mask)

            def padded(i: int, _t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                pred, null = torch.chunk(self._step(x, *prepared.step_inputs(i)), 2, dim=0)
                return pred if cfg_strength < 1e-5 else pred + (pred - null) * cfg_strength

            return padded

        forward = self._eager_dit if self.buckets else self._forward
        if self.compiled and self.buckets:
            log.warning("sequence longer than the largest bucket: running eager %s", kv(frames=length, largest=self.buckets[-1]))

        def guided(_i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            pred, null = torch.chunk(forward(x, step_cond, text_cond, text_uncond, t, mask), 2, dim=0)
            if cfg_strength < 1e-5:
                return pred
            return pred + (pred - null) * cfg_strength

        return guided

    def describe(self) -> dict[str, Any]:
        return {
            "buckets": list(self.buckets),
            "exact_padding": self.exact_padding,
            "compiled": self.compiled,
            "compile_scope": self.compile_scope if self.compiled else None,
            "cuda_graphs": [f"{n}x{steps}" for n, steps in self.graphs.keys()] if self.graphs is not None else None,
            "fast_path_parts": sorted(self.parts),
        }


def pad_text_ids(text: torch.Tensor, length: int) -> torch.Tensor:
    """Token ids cut or padded to ``length`` as upstream's TextEmbedding does, fillers as -1 (its +1 makes them 0).

    A graph's text input then has one shape per bucket whatever the text's length.
    """
    return F.pad(text[:, :length], (0, length - min(int(text.shape[1]), length)), value=-1)


class _Prepared(NamedTuple):
    """FlowSampler.prepare()'s result: one padded request's inputs shared by all its steps."""

    base: torch.Tensor  # (2, n, dim): the input projection's cond/text part and bias, cond half first
    keep: torch.Tensor  # (2, n) bool: real frames
    attn_mask: BucketMask | torch.Tensor  # what the attention processors take
    rope: tuple  # rotary table (freqs, xpos scale)
    times: torch.Tensor  # (steps,)
    mods: list[torch.Tensor] | None  # per block (steps, 6 dim); None: computed in each step
    head: torch.Tensor | None  # (steps, 2 dim)
    modulations: Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]

    def step_inputs(self, i: int) -> tuple:
        """The arguments of FlowSampler._padded_step after ``x`` for step ``i``."""
        if self.mods is None:
            mods, head = self.modulations(self.times[i : i + 1])
        else:
            mods, head = [m[i : i + 1] for m in self.mods], self.head[i : i + 1]
        return self.base, self.keep, self.attn_mask, self.rope, mods, head


class _ModulatedBlock(torch.nn.Module):
    """upstream DiTBlock.forward with its AdaLN modulation given: (x, mod (1 or b, 6 dim), mask, rope).

    The module holds the upstream block (same parameters); only ``attn_norm.linear(silu(t))``
    moved out, to FlowSampler.time_modulations.
    """

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x, mod, mask=None, rope=None):
        b = self.block
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = torch.chunk(mod, 6, dim=1)
        norm = b.attn_norm.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        x = x + gate_msa.unsqueeze(1) * b.attn(x=norm, mask=mask, rope=rope)
        norm = b.ff_norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp.unsqueeze(1) * b.ff(norm)


@dataclass
class _Stages:
    """The guided forward in three parts: what scope "blocks" compiles separately."""

    embed: Callable[..., Any]
    blocks: list[Callable[..., torch.Tensor]]
    head: Callable[..., torch.Tensor]


def _dit_single(tr, x, cond, text_embed, time, mask):
    """DiT.forward without guidance (drop flags False) on precomputed text embeddings."""
    t = tr.time_embed(time.repeat(x.shape[0]))
    h = tr.input_embed(x, cond, text_embed, drop_audio_cond=False, audio_mask=mask)
    rope = tr.rotary_embed.forward_from_seq_len(x.shape[1])
    residual = h
    for block in tr.transformer_blocks:
        h = block(h, t, mask=mask, rope=rope)
    if tr.long_skip_connection is not None:
        h = tr.long_skip_connection(torch.cat((h, residual), dim=-1))
    return tr.proj_out(tr.norm_out(h, t))
