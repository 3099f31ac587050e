"""A seeded model of the board's synthesis timings, to replay the monitor deterministically.

time = (a + b * frames * nfe per chunk) * max_clock / cur_clock * noise * load

Numbers follow the lineage: mean RTF ~0.21 with clocks locked, noise ~1.5 %.
A scenario is a list of phases; each phase sets the board's state for some requests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from ishowtts_edge.monitor.records import SynthesisRecord
from ishowtts_edge.telemetry import TelemetrySample

HOP_S = 256 / 24000  # seconds of audio per mel frame
A_S = 0.12  # fixed cost per chunk
B_S = 2.857e-4  # seconds per (frame * step) at the locked maximum clock
LOCKED_MHZ = 1300.5
STEP_S = 4.0  # seconds between requests


@dataclass
class BoardState:
    gpu_cur_mhz: float = LOCKED_MHZ
    gpu_max_mhz: float = LOCKED_MHZ
    jetson_clocks: bool | None = True
    nvpmodel_id: int | None = 0
    nvpmodel_name: str | None = "MAXN"
    temp_c: float = 55.0
    throttle: tuple[str, ...] = ()
    noise: float = 0.015  # lognormal sigma
    load: float = 1.0  # extra slowdown the telemetry cannot see
    outlier_p: float = 0.0  # chance of a 1.5x pause (GC, page cache)
    unlocked_jitter: bool = False  # clocks off: the governor picks a clock per request
    step_s: float = 0.0  # a cost every sampling step pays whatever its length (launches, small GEMMs)
    telemetry: bool = True


@dataclass
class Phase:
    count: int
    state: BoardState = field(default_factory=BoardState)
    #: Linear ramp of the GPU clock to this value over the phase (slow drift).
    ramp_to_mhz: float | None = None
    #: Every request of the phase this (mel_frames, nfe, chunks) instead of the random mix.
    sizes: tuple[int, int, int] | None = None


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Simulator:
    """Generates records and matching telemetry from a seeded RNG."""

    def __init__(self, seed: int, clock: FakeClock | None = None, wall0: float = 1_790_000_000.0) -> None:
        self.rng = random.Random(seed)
        self.clock = clock or FakeClock()
        self.wall0 = wall0
        self.n = 0

    def wall(self) -> float:
        return self.wall0 + self.clock.t

    def request_mix(self) -> tuple[int, int, int]:
        """(mel_frames, nfe, chunks): short chat lines to long paragraphs."""
        frames = int(self.rng.choice([90, 150, 240, 400, 650, 900, 1400]) * self.rng.uniform(0.85, 1.15))
        nfe = 7 if self.rng.random() < 0.9 else self.rng.choice([5, 8, 12])
        chunks = 1 if frames < 1200 else 2
        return frames, nfe, chunks

    def telemetry(self, state: BoardState, cur: float) -> TelemetrySample:
        return TelemetrySample(
            monotonic=self.clock.t,
            wall=self.wall(),
            source="jtop",
            gpu_cur_mhz=cur,
            gpu_min_mhz=cur if state.jetson_clocks else 306.0,
            gpu_max_mhz=state.gpu_max_mhz,
            gpu_hw_max_mhz=LOCKED_MHZ,
            temperatures_c={"cpu": state.temp_c - 3, "gpu": state.temp_c - 1, "tj": state.temp_c},
            nvpmodel_id=state.nvpmodel_id,
            nvpmodel_name=state.nvpmodel_name,
            jetson_clocks=state.jetson_clocks,
            throttle=list(state.throttle),
        )

    def one(self, state: BoardState, sizes: tuple[int, int, int] | None = None) -> SynthesisRecord:
        self.clock.advance(STEP_S)
        self.n += 1
        frames, nfe, chunks = sizes or self.request_mix()
        cur = state.gpu_cur_mhz
        if state.unlocked_jitter:
            cur = state.gpu_max_mhz * self.rng.uniform(0.45, 1.0)
        ideal = chunks * (A_S + nfe * state.step_s) + B_S * frames * nfe
        noise = math.exp(self.rng.gauss(0.0, state.noise))
        if state.outlier_p and self.rng.random() < state.outlier_p:
            noise *= 1.5
        seconds = ideal * (LOCKED_MHZ / cur) * noise * state.load
        return SynthesisRecord(
            request_id=f"r{self.n}",
            monotonic=self.clock.t,
            wall=self.wall(),
            audio_seconds=frames * HOP_S,
            synthesis_seconds=seconds,
            mel_frames=frames,
            nfe_step=nfe,
            chunks=chunks,
            telemetry=self.telemetry(state, cur) if state.telemetry else None,
        )

    def run(self, phases: list[Phase]):
        """Yield (phase index, record) for every request of every phase."""
        for index, phase in enumerate(phases):
            start = phase.state.gpu_cur_mhz
            for i in range(phase.count):
                state = phase.state
                if phase.ramp_to_mhz is not None:
                    frac = (i + 1) / phase.count
                    state = replace(state, gpu_cur_mhz=start + (phase.ramp_to_mhz - start) * frac)
                yield index, self.one(state, phase.sizes)


def warmup_points(scale: float = 1.0) -> list[tuple[int, int, float]]:
    """Warm-up timings per shape bucket; scale > 1 models first-call costs."""
    return [(f, 7, (A_S + B_S * f * 7) * scale) for f in (128, 256, 512, 1024)]
