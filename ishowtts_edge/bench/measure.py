"""Timed series and the figures every side shares: one Sample per synthesis, summaries per series.

Also the GPU clock read after each timed call, and the torch helpers the in-process
sections use (memory peaks, dynamo's counters, one guided DiT step).
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .stats import summarize
from .texts import FIRST_TEXT, REF_TEXT, TEXTS, sweep_text

if TYPE_CHECKING:
    from .context import Context


def log(message: str) -> None:
    """A progress line on stderr (stdout is the table's)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    """One synthesis: the timer the side uses, the audio it produced, and a second timer if any."""

    seconds: float  # synthesis time the RTF is computed from
    audio_seconds: float
    wall_seconds: float  # what the caller waited (== seconds in-process; the round trip via ZeroMQ)
    chunks: int | None = None  # text chunks the engine split the request into (upstream does not say)
    mel_frames: int | None = None  # frames generated (all chunks), what the length buckets are sized by
    nfe: int | None = None  # the step count the engine used (the default one when the request named none)
    # daemon only, from the reply header: time from the ROUTER receiving the request to the reply
    # handed to the socket (None from a daemon that does not report it), and time spent queued
    server_seconds: float | None = None
    queue_seconds: float | None = None


#: A side's synthesis for (text, NFE or None for the default), returning a call of one seed.
SynthFn = Callable[[str, "int | None"], Callable[[int], Sample]]


def overhead_breakdown(samples: list[Sample]) -> dict[str, Any]:
    """Where the daemon's overhead goes: the client + transport part and the daemon's own part.

    round trip - server_seconds = ZeroMQ transport and the client (framing, decoding);
    server_seconds - synthesis_seconds = the daemon around the engine (parsing, queueing,
    encoding the audio).  None where the daemon's replies carry no server_seconds.
    """
    served = [s for s in samples if s.server_seconds is not None]
    queued = [s.queue_seconds for s in samples if s.queue_seconds is not None]
    complete = len(served) == len(samples)
    return {
        "transport_seconds": summarize([s.wall_seconds - s.server_seconds for s in served]) if complete else None,
        "daemon_seconds": summarize([s.server_seconds - s.seconds for s in served]) if complete else None,
        "queue_seconds": summarize(queued) if len(queued) == len(samples) else None,
    }


class GpuClocks:
    """The GPU clock after each timed request, read outside its timing (sysfs devfreq on a
    Jetson, NVML on a dGPU host: the daemon's own telemetry sources).

    A slow series then shows whether the GPU ran slower or the software did.
    """

    def __init__(self, source: Any) -> None:
        self.source = source

    @classmethod
    def open(cls, device: str) -> "GpuClocks | None":
        if device != "cuda":
            return None
        from ishowtts_edge.telemetry import open_direct_source

        source = open_direct_source()
        return cls(source) if source is not None else None

    def read(self) -> tuple[float | None, list[str]]:
        try:
            sample = self.source.read()
        except Exception:  # a source that went away mid-run: the row says so with None
            return None, []
        return sample.gpu_cur_mhz, list(sample.throttle)

    def summary(self, rows: list[tuple[float | None, list[str]]]) -> dict[str, Any] | None:
        mhz = [r[0] for r in rows if r[0] is not None]
        if not mhz:
            return None
        return {"source": self.source.name, "mhz": summarize(mhz),
                "throttle_seen": sorted({tag for _, tags in rows for tag in tags})}


def measure(
    label: str, synth: Callable[[int], Sample], warmup: int, runs: int, breakdown: bool = False,
    clocks: GpuClocks | None = None,
) -> dict[str, Any]:
    """``warmup`` untimed calls, then ``runs`` timed ones; seeds 0.. so every side sees the same noise seeds.

    ``breakdown`` (the daemon) adds the split of the overhead from the reply headers;
    ``clocks`` adds ``gpu_clock`` (None without a clock source, e.g. on a CPU).
    """
    for i in range(warmup):
        synth(10_000 + i)
    samples, clock_rows = [], []
    for i in range(runs):
        samples.append(synth(i))
        if clocks is not None:
            clock_rows.append(clocks.read())
    audio = [s.audio_seconds for s in samples]
    row = {
        "audio_seconds": audio[0],
        "audio_seconds_varies": max(audio) - min(audio) > 1e-6,
        "chunks": samples[0].chunks,
        "rtf": summarize([s.seconds / s.audio_seconds for s in samples]),
        # the caller's view: what it waited / audio seconds (== rtf for upstream, timed from outside)
        "rtf_wall": summarize([s.wall_seconds / s.audio_seconds for s in samples]),
        "synthesis_seconds": summarize([s.seconds for s in samples]),
        "wall_seconds": summarize([s.wall_seconds for s in samples]),
        # what the caller waited beyond the engine's own synthesis time, request by request
        "overhead_seconds": summarize([s.wall_seconds - s.seconds for s in samples]),
    }
    if breakdown:
        row.update(overhead_breakdown(samples))
    row["gpu_clock"] = clocks.summary(clock_rows) if clocks is not None else None
    clock = row["gpu_clock"]
    clock_note = (f", GPU {clock['mhz']['min']:.0f}-{clock['mhz']['max']:.0f} MHz"
                  + (f" throttle {','.join(clock['throttle_seen'])}" if clock["throttle_seen"] else "")) if clock else ""
    log(f"  {label}: audio {row['audio_seconds']:.2f} s, RTF median {row['rtf']['median']:.4f} "
        f"p90 {row['rtf']['p90']:.4f} cv {row['rtf']['cv']:.3f}{clock_note}")
    return row


def find_row(rows: list[dict[str, Any]], nfe: int, text: str) -> dict[str, Any] | None:
    for row in rows:
        if row["nfe"] == nfe and row["text"] == text:
            return row
    return None


def steady_figures(
    label: str, ctx: "Context", rows: list[dict[str, Any]], nfe: int, synth_fn: SynthFn
) -> dict[str, Any]:
    """The steady state of the first request's (text, NFE): from the timed series, or measured here.

    The first request after READY and the after-idle probe are judged against it; a run
    whose series leave that row out (``--texts``, ``--nfe``, the warm daemon start) times it
    on its own with ``--warmup`` / ``--runs``.
    """
    row = find_row(rows, nfe, FIRST_TEXT)
    source = "results"
    if row is None:
        row = measure(f"{label} steady nfe {nfe} {FIRST_TEXT}", synth_fn(TEXTS[FIRST_TEXT], nfe), ctx.warmup, ctx.runs,
                      clocks=ctx.clocks)
        source = "measured"
    return {"text": FIRST_TEXT, "nfe": nfe, "source": source, "rtf": row["rtf"], "wall_seconds": row["wall_seconds"]}


def length_sweep(label: str, lengths: list[int], synth_fn: SynthFn) -> list[dict[str, Any]]:
    """One synthesis per text length (default NFE, seed 0): every length bucket a user's text may reach.

    Run after the timed series, so a recompilation it triggers shows in the counts read after it.
    """
    rows = []
    for chars in lengths:
        text = sweep_text(chars)
        s = synth_fn(text, None)(0)
        rows.append({
            "chars": chars,
            "text": text,
            "audio_seconds": s.audio_seconds,
            "mel_frames": s.mel_frames,
            "chunks": s.chunks,
            "nfe": s.nfe,
            "rtf": s.seconds / s.audio_seconds,
            "synthesis_seconds": s.seconds,
            "wall_seconds": s.wall_seconds,
        })
    if rows:
        log(f"  {label} length sweep: {len(rows)} texts, {lengths[0]}..{lengths[-1]} chars, RTF "
            f"{min(r['rtf'] for r in rows):.4f}..{max(r['rtf'] for r in rows):.4f}")
    return rows


# -- torch helpers of the in-process sections ---------------------------------------------------


def reset_peak(torch: Any, device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(torch: Any, device: str) -> int | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def free(torch: Any, device: str) -> None:
    """Drop what a finished section left: dynamo's caches hold the compiled model's weights."""
    try:
        torch._dynamo.reset()
    except Exception:  # torch without dynamo
        pass
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "frames_ok": int(counters["frames"]["ok"]),
        "recompiles": int(sum(counters["recompiles"].values())) if "recompiles" in counters else 0,
    }


def counts_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def last_figures(ctx: "Context", section: dict[str, Any], dit_step: Callable[[], dict[str, Any]]) -> None:
    """An in-process section's last figures: one guided DiT step (``dit_step``) and the GPU memory peak.

    Taken after the series and the recompile counts: the step timing calls the forward
    directly, not through a request.  A step that fails is recorded, not raised, so the
    section's other figures are kept.
    """
    try:
        section["dit_step"] = dit_step()
    except Exception as exc:
        section["dit_step"] = {"error": f"{type(exc).__name__}: {exc}"}
    section["peak_gpu_memory_bytes"] = peak_memory(ctx.torch, ctx.device)


def count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def time_step(torch: Any, device: str, call: Callable[[], Any], iterations: int) -> dict[str, Any]:
    """Milliseconds of ``call`` (one guided forward), 3 untimed calls first, synchronised around each."""
    for _ in range(3):
        call()
    samples = []
    for _ in range(iterations):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - t) * 1000.0)
    return summarize(samples)


def step_inputs(torch: Any, model: Any, frames: int, device: str) -> tuple[Any, Any, Any, Any]:
    """Random x / cond / text / time of one request's shape; text as long as a 5 s prompt + sentence."""
    generator = torch.Generator().manual_seed(0)
    dtype = next(model.parameters()).dtype
    n_mels = model.num_channels
    x = torch.randn(1, frames, n_mels, generator=generator).to(device, dtype)
    cond = torch.randn(1, frames, n_mels, generator=generator).to(device, dtype)
    vocab = max(len(model.vocab_char_map or {}), 2)
    text = torch.randint(1, vocab, (1, len(REF_TEXT) + len(TEXTS["sentence"]) + 1), generator=generator).to(device)
    return x, cond, text, torch.tensor(0.5, device=device, dtype=dtype)
