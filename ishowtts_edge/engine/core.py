"""The engine the daemon drives: synthesize, voices, describe (contract in ``engine/__init__``).

One request follows upstream f5-tts's ``infer_process`` -> ``infer_batch_process``:
chunk the text by the reference's pace, then per chunk tokenise ``ref_text +
gen_text``, compute the duration, sample the flow ODE (EPSS, NFE 7 by default),
cut off the reference frames, vocode, undo the loudness lift, and cross-fade the
chunks.  The expensive per-voice work (reference mel, its tokens) is done once per
voice by :class:`~.voices.VoiceRegistry`.  CUDA gets FP16 and a compiled transformer
over fixed length buckets; the CPU runs eager FP32 (and is what the equivalence
tests compare against upstream).  :func:`~.loader.load_engine` builds an Engine whole;
:mod:`.warmup` runs every shape once before READY.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ishowtts_edge.config import Settings
from ishowtts_edge.engine import AudioSink, SynthesisResult, WarmupReport
from ishowtts_edge.engine.checkpoint import ModelArch
from ishowtts_edge.engine.clock import ClockEmulator
from ishowtts_edge.engine.heartbeat import Progress, no_progress
from ishowtts_edge.engine.prompt import PromptPreparer, VoicePrompt
from ishowtts_edge.engine.sampler import MAX_DURATION, FlowSampler, compile_counters
from ishowtts_edge.engine.plan import SHORT_FIRST, UPSTREAM, Pace, StreamShape, plan_chunks
from ishowtts_edge.engine.text import CrossFader, duration_frames
from ishowtts_edge.engine.vocoder import Vocoder
from ishowtts_edge.engine.voices import VoiceRegistry
from ishowtts_edge.engine.warmup import warm_up
from ishowtts_edge.logs import kv
from ishowtts_edge.protocol import Cancellation, ErrorCode, ServiceError, SynthesizeParams
from ishowtts_edge.text import normalize as normalize_text

#: The spoken form of a text may be this many times server.max_text_chars (a string of digits
#: read one by one grows about 4-fold; money and big numbers up to 8-fold).
SPOKEN_TEXT_FACTOR = 4

log = logging.getLogger(__name__)

class Engine:
    """A loaded engine: model, vocoder, sampler and voices, all present (built by :func:`~.loader.load_engine`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        arch: ModelArch,
        checkpoint_path: Path,
        device: torch.device,
        dtype: torch.dtype,
        model: torch.nn.Module,
        vocoder: Vocoder,
        sampler: FlowSampler,
        prompts: PromptPreparer,
        registry: VoiceRegistry,
        attention_note: str | None = None,
        demo_voice_dir: Path | None = None,
        clock: ClockEmulator | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.engine
        self.demo = self.config.checkpoint is None
        self.arch = arch
        self.checkpoint_path = checkpoint_path
        self.device = device
        self.dtype = dtype
        self.model = model
        self.vocoder = vocoder
        self.sampler = sampler
        #: Why engine.attention = flash ended up on sdpa (describe(), ``status``); None otherwise.
        self.attention_note = attention_note
        self.prompts = prompts
        self.registry = registry
        self.clock = clock
        self.warmup_report: WarmupReport | None = None
        self._counters_at_ready: dict[str, int] | None = None
        self._demo_voice_dir = demo_voice_dir
        self._vocab: dict[str, int] = model.vocab_char_map or {}
        self._lock = threading.Lock()

    def reload_voices(self, settings: Settings) -> None:
        """SIGHUP: re-read the voice list and files; the model stays."""
        self.settings = settings
        self.registry.configure(settings.voices, self._demo_voice_dir)

    # -- voices -------------------------------------------------------------------------------------

    def _text_ids(self, prompt: VoicePrompt, gen_text: str) -> torch.Tensor:
        """Token ids of ref_text + gen_text, as upstream's convert_char_to_pinyin + list_str_to_idx.

        When the prompt ends in whitespace (always for single-byte endings) jieba cannot
        join a word across it, so the reference's cached tokens are reused; otherwise the
        whole string is converted.
        """
        from f5_tts.model.utils import convert_char_to_pinyin

        if prompt.prompt_text[-1].isspace():
            tokens = prompt.prompt_tokens + convert_char_to_pinyin([gen_text])[0]
        else:
            tokens = convert_char_to_pinyin([prompt.prompt_text + gen_text])[0]
        ids = [self._vocab.get(c, 0) for c in tokens]
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def voices(self) -> list[dict[str, Any]]:
        return self.registry.list()

    def check_voice(self, voice_id: str) -> None:
        """Raise UNKNOWN_VOICE before a request is queued, so a typo costs no place in the queue."""
        self.registry.check(voice_id)

    # -- synthesis ----------------------------------------------------------------------------------

    def _vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """(1, n_mels, frames) float32 -> (1, samples): see engine/vocoder.py for why it is not Vocos.decode."""
        return self.vocoder(mel)  # type: ignore[misc]

    def _chunk(self, prompt: VoicePrompt, gen_text: str, opts: dict[str, Any], generator,
               cancel: Cancellation | None = None) -> tuple[np.ndarray, int, int]:
        """One chunk: (audio, frames generated, frames the transformer ran on)."""
        text = self._text_ids(prompt, gen_text)
        duration = duration_frames(prompt.ref_audio_len, prompt.prompt_text, gen_text, opts["speed"])
        out = self.sampler.sample(  # type: ignore[union-attr]
            prompt.cond,
            text,
            duration,
            steps=opts["nfe_step"],
            cfg_strength=opts["cfg_strength"],
            sway_sampling_coef=opts["sway_sampling_coef"],
            generator=generator,
            after_step=self.clock.after_step if self.clock else None,
            cancel=cancel.check if cancel is not None else None,
        )
        with torch.inference_mode():
            generated = out.to(torch.float32)[:, prompt.ref_audio_len :, :].permute(0, 2, 1)
            wave = self._vocode(generated)
            if prompt.rms < self.config.target_rms:
                wave = wave * prompt.rms / self.config.target_rms
        total = int(out.shape[1])
        processed = self.sampler.bucket_for(total) or total  # type: ignore[union-attr]
        return wave.squeeze().cpu().numpy(), int(generated.shape[-1]), processed

    def max_frames(self) -> int:
        """The most mel frames (reference + generated) one pass can take: the text embedding's
        precomputed positions (8192 in f5-tts's DiT), else CFM.sample's cap."""
        text_embed = getattr(getattr(self.model, "transformer", None), "text_embed", None)
        positions = getattr(text_embed, "precompute_max_pos", None)
        return min(int(positions), MAX_DURATION) if positions else MAX_DURATION

    def _plan_chunks(self, text: str, prompt: VoicePrompt, ref_seconds: float, speed: float,
                     plan: str = UPSTREAM) -> list[str]:
        """The chunks of a request (engine/plan.py): upstream's, or a stream's ``short_first``."""
        arch = self.arch
        buckets = self.sampler.buckets
        return plan_chunks(
            text,
            Pace(prompt.ref_audio_len, prompt.prompt_text, speed, arch.sample_rate / arch.hop_length),
            prompt.ref_text,
            ref_seconds,
            max_frames=self.max_frames(),
            plan=plan,
            bucket_for=self.sampler.bucket_for if buckets else (lambda frames: None),
            largest_bucket=max(buckets) if buckets else None,
            stream=StreamShape(self.config.stream_first_chunk_s, self.config.stream_split_min_s),
        )

    def _options(self, params: SynthesizeParams) -> dict[str, Any]:
        cfg = self.config

        def pick(value, default):
            return default if value is None else value

        return {
            "nfe_step": pick(params.nfe_step, cfg.nfe_step),
            "cfg_strength": pick(params.cfg_strength, cfg.cfg_strength),
            "sway_sampling_coef": pick(params.sway_sampling_coef, cfg.sway_sampling_coef),
            "speed": pick(params.speed, cfg.speed),
            "seed": params.seed if params.seed is not None else secrets.randbelow(2**31),
        }

    def synthesize(self, params: SynthesizeParams, ref: bytes | None = None,
                   cancel: Cancellation | None = None, sink: AudioSink | None = None) -> SynthesisResult:
        """One request; ServiceError for unknown voices, bad references and CUDA OOM.

        ``cancel`` stops the request between chunks and between sampling steps (not inside
        a CUDA-graph replay of a whole chunk), raising the ServiceError it carries.

        With ``sink`` the audio is handed out as it becomes final, chunk by chunk, and the
        chunk plan defaults to ``short_first``; without it, to ``upstream``.  The same plan
        and seed give the same samples either way (the result's audio is their concatenation).

        ``synthesis_seconds`` counts only the model work (chunks, vocoder, cross-fade), not
        preparing a new voice, waiting for the engine or handing audio to the sink, so the
        RTF the monitor tracks reflects the hardware, not the request mix or a slow reader.
        """
        try:
            return self._synthesize(params, ref, cancel, sink)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.warning("CUDA out of memory during synthesis %s", kv(chars=len(params.text)))
            raise ServiceError(
                ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory for this request; try a shorter text"
            ) from None

    def _synthesize(self, params: SynthesizeParams, ref: bytes | None, cancel: Cancellation | None = None,
                    sink: AudioSink | None = None) -> SynthesisResult:
        registry = self.registry
        voice_started = time.perf_counter()
        if ref is not None:
            voice = registry.adhoc(ref, params.ref_text or "")  # type: ignore[union-attr]
        else:
            voice = registry.get(params.voice or self.settings.default_voice)  # type: ignore[union-attr]
        voice_seconds = time.perf_counter() - voice_started
        prompt: VoicePrompt = voice.payload
        opts = self._options(params)
        # The spoken form is what gets chunked, tokenised and timed: "$19.99" needs the audio
        # length of "nineteen dollars and ninety-nine cents".
        text = normalize_text(params.text) if params.normalize else params.text
        spoken_limit = SPOKEN_TEXT_FACTOR * self.settings.server.max_text_chars
        if len(text) > spoken_limit:  # "$999,999,999.99 " grows 8-fold: bound the work a request buys
            raise ServiceError(
                ErrorCode.TEXT_TOO_LONG,
                f"the text is {len(text)} characters once numbers and symbols are written out; the limit is "
                f"{spoken_limit} ({SPOKEN_TEXT_FACTOR} x server.max_text_chars): send it in parts",
            )
        plan = params.chunk_plan or (SHORT_FIRST if sink is not None else UPSTREAM)
        chunks = self._plan_chunks(text, prompt, voice.ref_seconds, opts["speed"], plan)
        sample_rate = self.arch.sample_rate  # type: ignore[union-attr]
        if sink is not None:
            sink.start(sample_rate, chunks)  # before any model work: a client already gone costs nothing
        with self._lock:
            started = time.perf_counter()
            handing = 0.0  # seconds inside the sink: the client's side, not the model's
            first_audio: float | None = None
            pieces: list[np.ndarray] = []

            def emit(samples: np.ndarray, chunk: int) -> None:
                nonlocal handing, first_audio
                piece = np.clip(samples, -1.0, 1.0).astype(np.float32)
                pieces.append(piece)
                if first_audio is None and piece.size:
                    first_audio = time.perf_counter() - started - handing
                if sink is not None and piece.size:
                    before = time.perf_counter()
                    sink.audio(piece, chunk)
                    handing += time.perf_counter() - before

            generator = torch.Generator(device=self.device).manual_seed(opts["seed"])
            fader = CrossFader(self.config.cross_fade_s, sample_rate)
            frames, model_frames = 0, 0
            for index, gen_text in enumerate(chunks):
                if cancel is not None:
                    cancel.check()
                wave, count, processed = self._chunk(prompt, gen_text, opts, generator, cancel)
                emit(fader.push(wave), index)
                frames += count
                model_frames += processed
            emit(fader.finish(), len(chunks) - 1)
            elapsed = time.perf_counter() - started - handing
        return SynthesisResult(
            audio=np.concatenate(pieces),
            sample_rate=sample_rate,
            synthesis_seconds=elapsed,
            mel_frames=frames,
            model_frames=model_frames,
            nfe_step=opts["nfe_step"],
            chunks=len(chunks),
            seed=opts["seed"],
            voice_seconds=voice_seconds,
            text=text,
            voice=None if ref is not None else (params.voice or self.settings.default_voice),
            first_audio_seconds=first_audio,
        )

    # -- warm-up ------------------------------------------------------------------------------------

    def warmup(self, progress: Progress | None = None) -> WarmupReport:
        """Run every shape a request can produce, so nothing compiles after READY (see :mod:`.warmup`)."""
        with self._lock:
            report = warm_up(self, progress or no_progress)
        self._counters_at_ready = compile_counters()
        self.warmup_report = report
        return report

    # -- status -------------------------------------------------------------------------------------

    def recompiles_since_ready(self) -> int | None:
        if self._counters_at_ready is None:
            return None
        now = compile_counters()
        return now["graphs"] - self._counters_at_ready["graphs"]

    def describe(self) -> dict[str, Any]:
        arch = self.arch
        compiled = bool(self.sampler.compiled)
        return {
            "device": self.device.type,
            "dtype": dtype_name(self.dtype),
            "model": arch.name,
            "arch": {"backbone": arch.backbone, **{k: arch.arch.get(k) for k in ("dim", "depth", "heads")}},
            "checkpoint": str(self.checkpoint_path),
            "demo": self.demo,
            "loaded": True,
            "compiled": compiled,
            "compile_mode": self.config.compile_mode if compiled else None,
            "compile_backend": self.config.compile_backend if compiled else None,
            "compile_scope": self.config.compile_scope if compiled else None,
            "buckets": list(self.sampler.buckets),
            "attention": self.sampler.attention,
            "attention_note": self.attention_note,
            "vocoder_graphs": self.vocoder.graphed_lengths,
            "recompiles_since_ready": self.recompiles_since_ready(),
            "warmup_seconds": round(self.warmup_report.seconds, 3) if self.warmup_report else None,
            "warmup_error": self.warmup_report.error if self.warmup_report else None,
            "voices": len(self.registry),
            "voices_available": self.registry.available(),
            "sample_rate": arch.sample_rate,
            "nfe_step": self.config.nfe_step,
            "clock_emulation": str(self.config.emulate_clock_devfreq) if self.clock else None,
        }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
