"""Does a restart reuse torch.compile's work?  Measure it the way the service sees it.

The unit points TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR into
/var/cache/ishowtts-edge so that a restarted daemon finds the kernels its previous life
compiled.  This script starts N fresh Python processes ("restarts") in turn, each
compiling the same model with the same cache directory, and reports per process the
compile+first-call time and inductor's FX-graph cache hits and misses.  Process 1 is
the cold start; the rest should show hits and a shorter time.

    python scripts/compile_cache_restart.py                      # CPU, temporary cache
    python scripts/compile_cache_restart.py --device cuda --cache-dir /var/cache/ishowtts-edge
    python scripts/compile_cache_restart.py --model f5           # the real DiT, if configured

Timings are for a report, not a test: they depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
import torch
from torch._dynamo.utils import counters

device, model_kind, mode = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
if model_kind == "mlp":
    # Shaped like one transformer block's feed-forward: enough fusions to make
    # inductor generate and (on GPU) autotune several kernels.
    model = torch.nn.Sequential(
        torch.nn.LayerNorm(512), torch.nn.Linear(512, 2048), torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(2048, 512), torch.nn.LayerNorm(512), torch.nn.Linear(512, 512),
    )
    x = torch.randn(4, 256, 512)
else:
    from f5_tts.model import DiT
    model = DiT(dim=1024, depth=22, heads=16, ff_mult=2, text_dim=512, conv_layers=4, text_num_embeds=256, mel_dim=100)
    x = None
dtype = torch.float16 if device == "cuda" else torch.float32
model = model.to(device=device, dtype=dtype).eval()
t0 = time.perf_counter()
compiled = torch.compile(model, mode=None if mode == "default" else mode)
with torch.inference_mode():
    if x is not None:
        compiled(x.to(device=device, dtype=dtype))
    else:
        n, b = 400, 1
        compiled(x=torch.randn(b, n, 100, device=device, dtype=dtype),
                 cond=torch.randn(b, n, 100, device=device, dtype=dtype),
                 text=torch.zeros(b, 64, dtype=torch.long, device=device),
                 time=torch.rand(b, device=device, dtype=dtype))
if device == "cuda":
    torch.cuda.synchronize()
elapsed = time.perf_counter() - t0
print(json.dumps({
    "seconds": elapsed,
    "fxgraph_cache_hit": counters["inductor"].get("fxgraph_cache_hit", 0),
    "fxgraph_cache_miss": counters["inductor"].get("fxgraph_cache_miss", 0),
    "torch": torch.__version__,
}))
"""


def cache_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="mlp", choices=["mlp", "f5"])
    parser.add_argument("--mode", default="default", help="torch.compile mode (the service: max-autotune-no-cudagraphs)")
    parser.add_argument("--restarts", type=int, default=3, help="processes to run in turn (first is cold)")
    parser.add_argument("--cache-dir", type=Path, help="cache root (default: a fresh temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ishowtts-cache-") as tmp:
        root = args.cache_dir or Path(tmp)
        env = dict(os.environ)
        env["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
        env["TRITON_CACHE_DIR"] = str(root / "triton")
        env["CUDA_CACHE_PATH"] = str(root / "cuda")
        # The FX graph cache is on by default in torch >= 2.4; say so for older ones.
        env.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        print(f"cache root {root}  device {args.device}  model {args.model}  mode {args.mode}")
        results = []
        for i in range(args.restarts):
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, args.device, args.model, args.mode],
                env=env, capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["process_seconds"] = time.perf_counter() - started
            result["cache_bytes"] = cache_size(root)
            results.append(result)
            label = "cold" if i == 0 else f"restart {i}"
            print(f"{label:>10}: compile+first call {result['seconds']:7.2f} s  "
                  f"(process {result['process_seconds']:6.2f} s)  "
                  f"fx-graph cache hit {result['fxgraph_cache_hit']} miss {result['fxgraph_cache_miss']}  "
                  f"cache {result['cache_bytes'] / 1e6:.1f} MB")
        if len(results) > 1 and results[0]["seconds"] > 0:
            print(f"restart/cold compile time: {results[-1]['seconds'] / results[0]['seconds']:.2f}  (torch {results[0]['torch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
