"""Whole sampling loops as CUDA graphs.

At NFE 7 one request is seven guided DiT calls of ~22 blocks each: hundreds of small
kernels whose launch cost, not their arithmetic, dominates on a fast GPU (and even
more on an Orin's slower CPU).  torch.compile fuses the kernels; a CUDA graph removes
the launches.  We capture the text embedding (cond and uncond), the request's shared
work (FlowSampler.prepare: time modulations, input projection of reference and text)
and the entire Euler loop (all steps, the CFG combination and the update) once per
(length bucket, step count) at warm-up, then each request only copies its inputs into the graph's static
buffers and replays it.  The text embedding is inside because, eager, its ~150 small
kernels were launched while the GPU sat idle: 4-6 ms of host time per request on the
H100, and the part of a request whose duration varied (docs/benchmarks.md).

Graphs are captured only during warm-up: a request with an unusual step count after
READY runs the per-step path (same compiled kernels, no new compile) instead of paying
a capture.  All graphs share one memory pool, which is safe because requests are
served one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)

#: (cond, text_cond, text_uncond, times (steps,), keep mask) -> what every step of the request shares
Prepare = Callable[..., object]
#: (x, prepared, step index) -> the guided (cond, uncond) output (2, n, mel)
Step = Callable[[torch.Tensor, object, int], torch.Tensor]


def capture(
    graph: torch.cuda.CUDAGraph,
    pool: object,
    device: torch.device,
    warm: Callable[[], object],
    run: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Run ``warm`` once on a side stream (lazy init, plans, allocations), then capture ``run``.

    Returns the captured output: a static tensor the graph rewrites on each replay.
    Graphs sharing ``pool`` must never run concurrently (requests are served one at a time).
    """
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        warm()
    torch.cuda.current_stream(device).wait_stream(side)
    with torch.cuda.graph(graph, pool=pool):
        out = run()
    return out


#: (padded token ids (1, n), drop_text) -> text embedding (1, n, dim)
TextEmbed = Callable[[torch.Tensor, bool], torch.Tensor]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    y0: torch.Tensor
    cond: torch.Tensor
    text: torch.Tensor  # (1, frames) token ids, -1 = filler (what upstream pads batches with)
    mask: torch.Tensor
    t: torch.Tensor
    cfg: torch.Tensor
    out: torch.Tensor


class GraphedLoops:
    def __init__(self, prepare: Prepare, step: Step, text_embed: TextEmbed) -> None:
        self.prepare = prepare
        self.step = step
        self.text_embed = text_embed
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = None
        self.frozen = False

    def __len__(self) -> int:
        return len(self._graphs)

    def keys(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def freeze(self) -> None:
        """After warm-up: no more captures."""
        self.frozen = True

    def _loop(self, g: _Graph, steps: int | None = None) -> torch.Tensor:
        y = g.y0
        steps = g.t.shape[0] - 1 if steps is None else steps
        text_cond, text_uncond = self.text_embed(g.text, False), self.text_embed(g.text, True)
        prepared = self.prepare(g.cond, text_cond, text_uncond, g.t[:-1], g.mask)
        for i in range(steps):
            pred, null = torch.chunk(self.step(y, prepared, i), 2, dim=0)
            y = y + (g.t[i + 1] - g.t[i]) * (pred + (pred - null) * g.cfg)
        return y

    def _capture(self, y0, cond, text, mask, t, cfg) -> _Graph:
        g = _Graph(
            graph=torch.cuda.CUDAGraph(),
            y0=y0.clone(),
            cond=cond.clone(),
            text=text.clone(),
            mask=mask.clone(),
            t=t.clone(),
            cfg=torch.tensor(cfg, device=y0.device, dtype=y0.dtype),
            out=y0.clone(),
        )
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Every step runs the same code, so one step lets compiled code settle (and allocate)
        # outside the capture; running whole loops here cost ~10 s of a cold warm-up.
        g.out = capture(g.graph, self._pool, y0.device, warm=lambda: self._loop(g, steps=1), run=lambda: self._loop(g))
        return g

    def run(
        self,
        y0: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        cfg: float,
    ) -> torch.Tensor | None:
        """The loop's output, or None when no graph exists for this shape (caller runs per step).

        ``text`` holds the token ids padded with -1 (or cut) to the bucket's frame count.
        """
        key = (int(y0.shape[1]), int(t.shape[0]) - 1)
        g = self._graphs.get(key)
        if g is None:
            if self.frozen:
                return None
            log.info("capturing CUDA graph %s", kv(frames=key[0], steps=key[1]))
            g = self._graphs[key] = self._capture(y0, cond, text, mask, t, cfg)
        g.y0.copy_(y0)
        g.cond.copy_(cond)
        g.text.copy_(text)
        g.mask.copy_(mask)
        g.t.copy_(t)
        g.cfg.fill_(cfg)
        g.graph.replay()
        return g.out.clone()
