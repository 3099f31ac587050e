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
* each ODE step can be followed by a hook (the clock emulation slows steps down).

tests/test_engine_equivalence.py holds it to upstream within float noise.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ishowtts_edge.engine.attention import BucketAttnProcessor, bucket_mask
from ishowtts_edge.engine.graphs import GraphedLoops
from ishowtts_edge.engine.upstream import ensure_f5_model_importable
from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)

#: CFM.sample's cap on the total frame count.
MAX_DURATION = 65536


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
        self.compile_mode = compile_mode
        self._forward: Callable[..., torch.Tensor] = self._guided_dit
        #: What _guided_dit runs: the embedding, the blocks and the output head, eager or (scope
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
            if scope == "blocks":
                # The blocks share their code and, with parameters as graph inputs (dynamo's
                # default since torch 2.5), one guard set: the first block's compile serves all.
                # Embedding and output head are small graphs of their own (left eager, their
                # unfused kernels cost ~3 % of RTF on an H100: docs/benchmarks.md).
                def compiled(fn):
                    return torch.compile(fn, backend=compile_backend, dynamic=dynamic, **options)

                self._stages = _Stages(
                    compiled(self._embed),
                    [compiled(block) for block in self.transformer.transformer_blocks],
                    compiled(self._head),
                )
            else:
                self._forward = torch.compile(self._guided_dit, backend=compile_backend, dynamic=dynamic, **options)
            self.compiled = True
        elif compile_mode is not None:
            log.warning("torch.compile skipped: only the DiT backbone has a compiled path %s",
                        kv(backbone=type(self.transformer).__name__))
        # Whole-loop CUDA graphs need fixed shapes, so only with buckets (see graphs.py); zipvoice-style
        # average upsampling of the text reads lengths back to the host, which a graph cannot hold.
        graphable = self.buckets and self.is_dit and not getattr(self.transformer.text_embed, "average_upsampling", False)
        self.graphs = GraphedLoops(self._forward, self._graph_text_embed) if cuda_graphs and graphable else None

    def disable_compile(self) -> None:
        self._forward = self._guided_dit
        self._stages = self._eager_stages()
        self.compiled = False
        if self.graphs is not None:
            self.graphs = GraphedLoops(self._forward, self._graph_text_embed)

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
        """DiT.forward(cfg_infer=True) with precomputed text embeddings -> (2, n, mel)."""
        return self._guided(self._stages, x, cond, text_cond, text_uncond, time, mask)

    def _eager_dit(self, x, cond, text_cond, text_uncond, time, mask) -> torch.Tensor:
        """The same, uncompiled: lengths beyond the buckets must not reach compiled code."""
        return self._guided(self._eager_stages(), x, cond, text_cond, text_uncond, time, mask)

    def _eager_stages(self) -> "_Stages":
        return _Stages(self._embed, list(self.transformer.transformer_blocks) if self.is_dit else [], self._head)

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
        velocity = None if graphed is not None else self._velocity_fn(step_cond, text, length, cfg_strength, mask, padded is not None)
        timing = after_step is not None
        for i in range(0 if graphed is not None else len(t) - 1):
            if cancel is not None:
                cancel()
            started = time.perf_counter() if timing else 0.0
            t0, t1 = t[i], t[i + 1]
            # torchdiffeq casts t to y's (real) dtype before calling the model; dt stays in t's dtype
            y = y + (t1 - t0) * velocity(t0.to(y.dtype), y)
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
        self, step_cond: torch.Tensor, text: torch.Tensor, length: int, cfg_strength: float, mask, bucketed: bool
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        tr = self.transformer
        if not self.is_dit:  # UNetT / MMDiT: upstream's own forward, eager, exact lengths
            def generic(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                if cfg_strength < 1e-5:
                    return tr(x=x, cond=step_cond, text=text, time=t, mask=None, cache=True)
                pred, null = torch.chunk(
                    tr(x=x, cond=step_cond, text=text, time=t, mask=None, cfg_infer=True, cache=True), 2, dim=0
                )
                return pred + (pred - null) * cfg_strength

            return generic

        text_cond = tr.text_embed(text, seq_len=length, drop_text=False)
        if cfg_strength < 1e-5 and not self.compiled:
            # upstream's unguided call, at batch 1 (exact)
            def unguided(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                return _dit_single(tr, x, step_cond, text_cond, t, mask)

            return unguided

        text_uncond = tr.text_embed(text, seq_len=length, drop_text=True)
        forward = self._forward if (bucketed or not self.buckets) else self._eager_dit
        if self.compiled and not bucketed and self.buckets:
            log.warning("sequence longer than the largest bucket: running eager %s", kv(frames=length, largest=self.buckets[-1]))

        def guided(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
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
        }


def pad_text_ids(text: torch.Tensor, length: int) -> torch.Tensor:
    """Token ids cut or padded to ``length`` as upstream's TextEmbedding does, fillers as -1 (its +1 makes them 0).

    A graph's text input then has one shape per bucket whatever the text's length.
    """
    return F.pad(text[:, :length], (0, length - min(int(text.shape[1]), length)), value=-1)


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
