#!/usr/bin/env python3
"""What the daemon's ZeroMQ front end adds to a request, without a model: a floor for the overhead.

Two servers, each in its own process, each answering the same requests from the real
client (ishowtts_edge.client) after busy-waiting as long as a synthesis takes (the GPU
wait keeps the engine's thread busy, not asleep):

* ``floor``: a bare pyzmq REP socket: the transport alone.
* ``server``: ishowtts_edge.server.Server, the daemon's own front end, with a stub backend
  returning audio that encodes (f32le) to a frame of the given size.

Their difference is the daemon's code around the engine (parsing, queueing, thread
hand-offs, encoding the header); the floor is what ZeroMQ costs on this machine.
Run it on the target (a Jetson, after jetson_clocks) to see what part of `ishowtts-edge bench`'s
overhead figure is the machine's:

    python scripts/server_overhead.py --runs 200 --json out/overhead.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ishowtts_edge.bench.report import write_json  # noqa: E402  (after the path insert)
from ishowtts_edge.bench.stats import summarize  # noqa: E402

SERVER = r'''
import sys, time
sys.path.insert(0, sys.argv[4])
from ishowtts_edge.protocol import Limits
from ishowtts_edge.server import Server

import numpy as np
from ishowtts_edge.engine import SynthesisResult

endpoint, wait, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
audio = np.full(size // 4, 0.5, dtype=np.float32)  # the client asks for f32le: 4 bytes a sample


class Stub:
    def synthesize(self, request, sink=None):
        end = time.perf_counter() + wait
        while time.perf_counter() < end:
            pass
        return SynthesisResult(audio=audio, sample_rate=24000, synthesis_seconds=wait, mel_frames=1, nfe_step=1)

    def completed(self, request, result):
        pass

    def control(self, request):
        return {"state": "ready"}

    def accepting(self, request):
        return None


server = Server(endpoint, Stub(), Limits(1 << 24, 1000, 1 << 22), max_queue=4)
server.bind()
print("ready", flush=True)
while True:
    server.poll(100)
'''

FLOOR = r'''
import sys, time, zmq
endpoint, wait, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
sock = zmq.Context().socket(zmq.REP)
sock.bind(endpoint)
payload = b"\x01" * size
print("ready", flush=True)
while True:
    sock.recv_multipart()
    end = time.perf_counter() + wait
    while time.perf_counter() < end:
        pass
    sock.send_multipart([b'{"v": 1, "ok": true, "op": "synthesize", "id": null}', payload], copy=False)
'''


def measure(kind: str, run_dir: Path, wait: float, size: int, runs: int) -> dict:
    from ishowtts_edge.client import Client

    endpoint = f"ipc://{run_dir / (kind + '.sock')}"
    proc = subprocess.Popen([sys.executable, "-c", SERVER if kind == "server" else FLOOR, endpoint, repr(wait),
                             str(size), str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} server did not start (exit {proc.poll()})")
        overheads, server_seconds = [], []
        with Client(endpoint, timeout_s=wait + 10, retries=0) as client:
            for i in range(runs + 3):  # three untimed: the first requests of a process pay set-up costs
                started = time.perf_counter()
                reply = client.synthesize("overhead probe", "stub", format="f32le", seed=i)
                elapsed = time.perf_counter() - started
                if len(reply.audio) != size:
                    raise RuntimeError(f"{kind}: reply of {len(reply.audio)} bytes, expected {size}")
                if i >= 3:
                    overheads.append(elapsed - wait)
                    if "server_seconds" in reply.header:
                        server_seconds.append(reply.header["server_seconds"] - wait)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    row = {"overhead_seconds": summarize(overheads)}
    if server_seconds:
        row["inside_server_seconds"] = summarize(server_seconds)  # receipt to reply built, minus the wait
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wait", type=float, default=0.028, help="seconds each request busy-waits (a synthesis)")
    ap.add_argument("--reply-bytes", type=int, default=390_000, help="audio frame size (4 s of f32 at 24 kHz)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.runs < 1 or a.wait < 0 or a.reply_bytes < 1:
        ap.error("--runs and --reply-bytes must be positive, --wait not negative")
    out = {"wait_seconds": a.wait, "reply_bytes": a.reply_bytes}
    with tempfile.TemporaryDirectory(prefix="server-overhead-") as tmp:
        for kind in ("floor", "server"):
            out[kind] = measure(kind, Path(tmp), a.wait, a.reply_bytes, a.runs)
    floor, server = out["floor"]["overhead_seconds"], out["server"]["overhead_seconds"]
    out["added_by_server_seconds"] = server["median"] - floor["median"]
    print(f"round trip minus the {a.wait * 1e3:.0f} ms wait, {a.reply_bytes} B reply, median of {a.runs}: "
          f"bare REQ/REP {floor['median'] * 1e3:.3f} ms (p90 {floor['p90'] * 1e3:.3f}), "
          f"ishowtts-edge Server {server['median'] * 1e3:.3f} ms (p90 {server['p90'] * 1e3:.3f}); "
          f"the server adds {out['added_by_server_seconds'] * 1e3:.3f} ms")
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
