#!/usr/bin/env python3
"""Where a guided DiT step's time goes: each part of one block timed alone, against its floor.

The profiler's kernel spans overlap under CUDA graph replay (docs/benchmarks.md), so
this script times each part of the F5TTS_v1_Base transformer on its own instead: the
part is captured ``--reps`` times into one CUDA graph and the graph's replays are timed
with CUDA events (median over ``--iters`` replays, divided by ``--reps``).  Inputs have
the engine's shapes at one length bucket (batch 2: the cond and uncond halves), fp16,
random weights.  Each row prints the time, the part's matrix FLOPs and the bytes it must
move at least, and the floor those give at ``--tflops`` and ``--gbps`` (the H200's
measured dense fp16 rate and copy bandwidth by default; give the Orin's there).

    python scripts/dit_parts.py --frames 896 --json out/parts.json

Needs CUDA; weights are random (timings only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=896, help="the length bucket (frames per CFG half)")
    ap.add_argument("--steps", type=int, default=7, help="NFE: how many steps share one request's preparation")
    ap.add_argument("--reps", type=int, default=20, help="copies of the part in one CUDA graph")
    ap.add_argument("--iters", type=int, default=15, help="timed graph replays")
    ap.add_argument("--tflops", type=float, default=790.0, help="dense fp16 matrix rate for the floors")
    ap.add_argument("--gbps", type=float, default=4300.0, help="memory bandwidth (read + write) for the floors")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled whole-block rows")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a smoke run of the script (fp32, host timer, no graphs; the figures mean nothing)")
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch
    import torch.nn.functional as F

    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("dit_parts: needs CUDA (or --device cpu for a smoke run)", file=sys.stderr)
        return 2
    from ishowtts_edge.engine.attention import BucketAttnProcessor, bucket_mask, flash_key_padded, fuse_qkv
    from ishowtts_edge.engine.checkpoint import read_arch
    from ishowtts_edge.engine.sampler import _ModulatedBlock
    from ishowtts_edge.engine.upstream import ensure_f5_model_importable

    package = ensure_f5_model_importable()
    arch = read_arch("F5TTS_v1_Base").arch
    dim, heads, depth, ff_mult = arch["dim"], arch["heads"], arch["depth"], arch["ff_mult"]
    dev, dt = (torch.device("cuda"), torch.float16) if cuda else (torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    dit = package.DiT(**{k: v for k, v in arch.items() if k not in ("checkpoint_activations",)},
                      text_num_embeds=2545, mel_dim=100).to(dev, dt).eval()
    for p in dit.parameters():
        p.requires_grad_(False)
        p.normal_(0, 0.02)
    block = dit.transformer_blocks[0]
    block.attn.processor = BucketAttnProcessor(block.attn.processor.pe_attn_head, "sdpa")
    n, b = a.frames, 2
    real = int(n * 0.97)
    x = torch.randn(b, n, dim, device=dev, dtype=dt)
    keep = (torch.arange(n, device=dev) < real).unsqueeze(0).expand(b, n).contiguous()
    mask = bucket_mask(keep, dt)
    rope = dit.rotary_embed.forward_from_seq_len(n)
    t = torch.rand(a.steps, device=dev, dtype=dt)
    emb = F.silu(dit.time_embed(t))
    mod = block.attn_norm.linear(emb[:1])
    head_dim = dim // heads
    inner = ff_mult * dim
    rows = []

    def timed(fn) -> float:
        if not cuda:
            import time

            with torch.inference_mode():
                fn()
                started = time.perf_counter()
                fn()
            return (time.perf_counter() - started) * 1e6
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            for _ in range(a.reps):
                fn()
        times = []
        for _ in range(a.iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / a.reps)
        return statistics.median(times)

    def row(name: str, fn, flops: float, nbytes: float, per_step: float, note: str = "") -> None:
        try:
            us = timed(fn)
        except Exception as exc:  # one part failing must not lose the others
            print(f"  {name}: failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
            return
        floor = max(flops / (a.tflops * 1e12), nbytes / (a.gbps * 1e9)) * 1e6
        rows.append({"part": name, "us": round(us, 2), "gflop": round(flops / 1e9, 3), "mbytes": round(nbytes / 1e6, 2),
                     "floor_us": round(floor, 2), "per_step": per_step, "step_us": round(us * per_step, 1), "note": note})

    act = b * n * dim * 2  # one (2, n, dim) fp16 activation
    w = dim * dim * 2
    mm = 2 * b * n * dim * dim
    wq = torch.cat([block.attn.to_q.weight, block.attn.to_k.weight, block.attn.to_v.weight])
    bq = torch.cat([block.attn.to_q.bias, block.attn.to_k.bias, block.attn.to_v.bias])
    row("q, k, v: three GEMMs", lambda: (block.attn.to_q(x), block.attn.to_k(x), block.attn.to_v(x)),
        3 * mm, act + 3 * w + 3 * act, depth)
    row("q, k, v: one fused GEMM", lambda: F.linear(x, wq, bq), 3 * mm, act + 3 * w + 3 * act, depth)
    row("attention out projection", lambda: block.attn.to_out[0](x), mm, 2 * act + w, depth)
    ffin = torch.randn(b, n, inner, device=dev, dtype=dt)
    lin1, lin2 = block.ff.ff[0][0], block.ff.ff[2]
    row("FF in (GEMM only)", lambda: lin1(x), ff_mult * mm, act + ff_mult * (w + act), depth)
    row("FF in + GELU(tanh), eager", lambda: block.ff.ff[0](x), ff_mult * mm, act + ff_mult * (w + act), depth)
    row("FF out (GEMM)", lambda: lin2(ffin), ff_mult * mm, ff_mult * (act + w) + act, depth)
    q, k, v = (torch.randn(b, heads, n, head_dim, device=dev, dtype=dt) for _ in range(3))
    att_flops = 4 * b * heads * n * n * head_dim
    row("SDPA, additive key mask (engine)", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bias),
        att_flops, 4 * act, depth)
    row("SDPA, no mask (flash), same n", lambda: F.scaled_dot_product_attention(q, k, v), att_flops, 4 * act, depth)
    if cuda:
        flash_mask = bucket_mask(keep, dt, "flash")
        row("FlashAttention varlen, seqused_k (engine.attention = flash)",
            lambda: flash_key_padded(q, k, v, flash_mask), att_flops, 4 * act, depth)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def cudnn_masked():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bias)

        row("SDPA, additive key mask, cuDNN", cudnn_masked, att_flops, 4 * act, depth)
    except ImportError:
        pass
    row("AdaLN linear, M=2 (upstream: every block, every step)", lambda: block.attn_norm.linear(F.silu(emb[:2])),
        2 * 2 * dim * 6 * dim, 6 * w, depth)
    row(f"AdaLN linear, M={a.steps} (once per request, per step)", lambda: block.attn_norm.linear(emb),
        2 * a.steps * dim * 6 * dim, 6 * w, depth / a.steps)
    pos = dit.input_embed.conv_pos_embed
    k_pos = pos.conv1d[0].kernel_size[0]
    groups = pos.conv1d[0].groups
    conv_flops = 2 * 2 * b * n * dim * (dim // groups) * k_pos
    conv_bytes = 2 * (2 * act + dim * (dim // groups) * k_pos * 2)
    row("position conv, upstream (conv1d of the transposed view), batch 2", lambda: pos(x, mask=keep),
        conv_flops, conv_bytes, 1)
    row("position conv, upstream, two batch-1 calls (cond, uncond)",
        lambda: (pos(x[:1], mask=keep[:1]), pos(x[1:], mask=keep[1:])), conv_flops, conv_bytes, 1)
    nhwc = [c.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last) for c in (pos.conv1d[0], pos.conv1d[2])]
    drop = ~keep[:, None, None, :]

    def conv_nhwc():  # the same convs as conv2d on the (b, n, dim) activations as they lie (channels-last)
        h = x.permute(0, 2, 1).unsqueeze(2).masked_fill(drop, 0.0)
        for weight, conv, act_fn in ((nhwc[0], pos.conv1d[0], pos.conv1d[1]), (nhwc[1], pos.conv1d[2], pos.conv1d[3])):
            h = act_fn(F.conv2d(h, weight, conv.bias, padding=(0, conv.padding[0]), groups=conv.groups).masked_fill(drop, 0.0))
        return h.squeeze(2).permute(0, 2, 1)

    row("position conv, channels-last conv2d, batch 2", conv_nhwc, conv_flops, conv_bytes, 1)
    row("LayerNorm + modulation, eager", lambda: block.attn_norm.norm(x) * (1 + mod[:, :dim][:, None]) + mod[:, dim:2 * dim][:, None],
        0, 2 * act, 2 * depth)
    block_flops = 2 * b * n * (4 * dim * dim + 2 * dim * inner) + att_flops
    block_bytes = 2 * (4 * w + 2 * ff_mult * w)  # its weights, read once
    wrapped = _ModulatedBlock(block)
    row("whole block, eager, separate q/k/v", lambda: wrapped(x, mod, mask=mask, rope=rope), block_flops, block_bytes, depth)
    if not a.no_compile:
        import torch._dynamo

        # The step's embedding stage as each path compiles it (dynamic shapes, as the engine).
        ie, mel = dit.input_embed, 100
        xm = torch.randn(1, n, mel, device=dev, dtype=dt)
        cond = torch.randn(1, n, mel, device=dev, dtype=dt)
        text_cond, text_uncond = (torch.randn(1, n, arch["text_dim"], device=dev, dtype=dt) for _ in range(2))
        keep1 = keep[:1]

        def upstream_embed(x1, c, tc, tu, time, k1):  # the main branch's FlowSampler._embed
            tt = dit.time_embed(time.repeat(1))
            h = torch.cat((ie(x1, c, tc, drop_audio_cond=False, audio_mask=k1),
                           ie(x1, c, tu, drop_audio_cond=True, audio_mask=k1)))
            k2 = torch.cat((k1, k1))
            return h, torch.cat((tt, tt)), bucket_mask(k2, h.dtype), dit.rotary_embed.forward_from_seq_len(x1.shape[1])

        fixed = torch.cat((torch.cat((cond, torch.zeros_like(cond))), torch.cat((text_cond, text_uncond))), dim=-1)
        base = F.linear(fixed, ie.proj.weight[:, mel:], ie.proj.bias)

        def padded_embed(x1, base2, k2):  # FlowSampler._padded_embed
            h = F.linear(x1, ie.proj.weight[:, : x1.shape[-1]]) + base2
            return ie.conv_pos_embed(h, mask=k2) + h

        torch._dynamo.reset()
        fn = torch.compile(upstream_embed, dynamic=True)
        row("embed stage, upstream: time embed + two input_embed calls, compiled",
            lambda: fn(xm, cond, text_cond, text_uncond, t[0], keep1), conv_flops, conv_bytes, 1)
        torch._dynamo.reset()
        fn2 = torch.compile(padded_embed, dynamic=True)
        row("embed stage, padded path: shared x projection, batch-2 conv, compiled",
            lambda: fn2(xm, base, keep), conv_flops, conv_bytes, 1)
        fuse_qkv(block.attn)
        for layout, dynamic in (("dynamic", True), ("static", False)):
            torch._dynamo.reset()
            compiled = torch.compile(_ModulatedBlock(block), dynamic=dynamic)
            row(f"whole block, compiled ({layout} shapes), fused q/k/v", lambda: compiled(x, mod, mask=mask, rope=rope),
                block_flops, block_bytes, depth)
        torch._dynamo.reset()
        block.attn.processor = BucketAttnProcessor(block.attn.processor.pe_attn_head, "flash")
        compiled = torch.compile(_ModulatedBlock(block), dynamic=True)
        row("whole block, compiled (dynamic shapes), fused q/k/v, flash", lambda: compiled(x, mod, mask=flash_mask, rope=rope),
            block_flops, block_bytes, depth)
        block.attn.processor = BucketAttnProcessor(block.attn.processor.pe_attn_head, "sdpa")
        del block.attn.to_qkv
        torch._dynamo.reset()
        compiled = torch.compile(_ModulatedBlock(block), dynamic=True)
        row("whole block, compiled (dynamic shapes), separate q/k/v", lambda: compiled(x, mod, mask=mask, rope=rope),
            block_flops, block_bytes, depth)
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"\n{gpu}, torch {torch.__version__}, bucket {n} frames x batch {b}, {str(dt).removeprefix('torch.')}; floors at {a.tflops:g} TFLOP/s, "
          f"{a.gbps:g} GB/s")
    print(f"{'part':68s} {'us':>8s} {'floor':>7s} {'x floor':>7s} {'GFLOP':>7s} {'/step':>6s} {'us/step':>8s}")
    for r in rows:
        ratio = r["us"] / r["floor_us"] if r["floor_us"] else float("nan")
        print(f"{r['part'][:68]:68s} {r['us']:8.2f} {r['floor_us']:7.2f} {ratio:7.1f} {r['gflop']:7.2f} "
              f"{r['per_step']:6.2f} {r['step_us']:8.1f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "frames": n, "batch": b, "args": vars(a) | {"json": str(a.json)},
                                      "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
