"""Whole sampling loops as CUDA graphs.

At NFE 7 one request is seven guided DiT calls of ~22 blocks each: hundreds of small
kernels whose launch cost, not their arithmetic, dominates on a fast GPU (and even
more on an Orin's slower CPU).  torch.compile fuses the kernels; a CUDA graph removes
the launches.  We capture the entire Euler loop (all steps, the CFG combination and
the update) once per (length bucket, step count) at warm-up, then each request only
copies its inputs into the graph's static buffers and replays it.

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

Forward = Callable[..., torch.Tensor]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    y0: torch.Tensor
    cond: torch.Tensor
    text_cond: torch.Tensor
    text_uncond: torch.Tensor
    mask: torch.Tensor
    t: torch.Tensor
    cfg: torch.Tensor
    out: torch.Tensor


class GraphedLoops:
    def __init__(self, forward: Forward) -> None:
        self.forward = forward
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
        for i in range(steps):
            pred, null = torch.chunk(self.forward(y, g.cond, g.text_cond, g.text_uncond, g.t[i], g.mask), 2, dim=0)
            y = y + (g.t[i + 1] - g.t[i]) * (pred + (pred - null) * g.cfg)
        return y

    def _capture(self, y0, cond, text_cond, text_uncond, mask, t, cfg) -> _Graph:
        g = _Graph(
            graph=torch.cuda.CUDAGraph(),
            y0=y0.clone(),
            cond=cond.clone(),
            text_cond=text_cond.clone(),
            text_uncond=text_uncond.clone(),
            mask=mask.clone(),
            t=t.clone(),
            cfg=torch.tensor(cfg, device=y0.device, dtype=y0.dtype),
            out=y0.clone(),
        )
        side = torch.cuda.Stream(device=y0.device)
        side.wait_stream(torch.cuda.current_stream(y0.device))
        with torch.cuda.stream(side):
            # Every step runs the same code, so one step lets compiled code settle (and allocate)
            # outside the capture; running whole loops here cost ~10 s of a cold warm-up.
            self._loop(g, steps=1)
        torch.cuda.current_stream(y0.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(g.graph, pool=self._pool):
            g.out = self._loop(g)
        return g

    def run(
        self,
        y0: torch.Tensor,
        cond: torch.Tensor,
        text_cond: torch.Tensor,
        text_uncond: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        cfg: float,
    ) -> torch.Tensor | None:
        """The loop's output, or None when no graph exists for this shape (caller runs per step)."""
        key = (int(y0.shape[1]), int(t.shape[0]) - 1)
        g = self._graphs.get(key)
        if g is None:
            if self.frozen:
                return None
            log.info("capturing CUDA graph %s", kv(frames=key[0], steps=key[1]))
            g = self._graphs[key] = self._capture(y0, cond, text_cond, text_uncond, mask, t, cfg)
        g.y0.copy_(y0)
        g.cond.copy_(cond)
        g.text_cond.copy_(text_cond)
        g.text_uncond.copy_(text_uncond)
        g.mask.copy_(mask)
        g.t.copy_(t)
        g.cfg.fill_(cfg)
        g.graph.replay()
        return g.out.clone()
