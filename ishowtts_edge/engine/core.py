"""The engine the daemon drives: load, warm up, synthesize (contract in ``engine/__init__``).

One request follows upstream f5-tts's ``infer_process`` -> ``infer_batch_process``:
chunk the text by the reference's pace, then per chunk tokenise ``ref_text +
gen_text``, compute the duration, sample the flow ODE (EPSS, NFE 7 by default),
cut off the reference frames, vocode, undo the loudness lift, and cross-fade the
chunks.  The expensive per-voice work (reference mel, its tokens) is done once per
voice by :class:`~.voices.VoiceRegistry`.  CUDA gets FP16 and a compiled transformer
over fixed length buckets; the CPU runs eager FP32 (and is what the equivalence
tests compare against upstream).
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ishowtts_edge.config import Settings
from ishowtts_edge.engine import AudioSink, EngineLoadError, SynthesisResult, WarmupReport
from ishowtts_edge.engine.checkpoint import ModelArch, load_model, load_vocos, read_arch
from ishowtts_edge.engine.clock import ClockEmulator
from ishowtts_edge.engine.demo import ensure_demo_bundle
from ishowtts_edge.engine.reference import (
    MIN_REFERENCE_SECONDS,
    clip_reference,
    decode_audio,
    normalize_ref_text,
)
from ishowtts_edge.engine.attention import flash_unavailable
from ishowtts_edge.engine.sampler import MAX_DURATION, FlowSampler, compile_counters
from ishowtts_edge.engine.text import (
    CrossFader,
    chunk_text,
    duration_frames,
    fit_chunks,
    max_chunk_bytes,
    max_gen_bytes,
    prompt_ref_text,
    short_first,
)
from ishowtts_edge.engine.upstream import ensure_f5_model_importable, f5_default_vocab
from ishowtts_edge.engine.vocoder import Vocoder
from ishowtts_edge.engine.voices import PreparedVoice, VoiceRegistry
from ishowtts_edge.logs import kv
from ishowtts_edge.protocol import Cancellation, ErrorCode, ServiceError, SynthesizeParams
from ishowtts_edge.text import normalize as normalize_text

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: upstream's appended 50 ms of silence is not voice; it does not count towards the minimum length.
_TAIL_SECONDS = 0.05


@dataclass
class VoicePrompt:
    """A reference ready for sampling: its mel on the device and its prompt tokens."""

    cond: torch.Tensor  # (1, frames, n_mels), model dtype
    ref_audio_len: int  # samples // hop, as upstream counts it
    rms: torch.Tensor  # loudness before the lift to target_rms
    ref_text: str  # the transcript with upstream's sentence stop (what sets the chunk size)
    prompt_text: str  # ref_text plus upstream's trailing space (what is tokenised)
    prompt_tokens: list[str]


def _noop(_: str) -> None:
    pass


#: Seconds between progress calls while one long step (a compile, a model load) runs.
HEARTBEAT_S = 5.0
#: Largest reduced term of rate/target a reference may need (see _resample).
MAX_RESAMPLE_RATIO_TERM = 1000
#: Resamplers kept, one per input rate, least recently used dropped first.
MAX_CACHED_RESAMPLERS = 8


@contextlib.contextmanager
def _heartbeat(progress: Progress, message: str) -> Iterator[None]:
    """Call ``progress`` now and then every few seconds from a helper thread until the step ends.

    A max-autotune compile of one bucket can take minutes; systemd's start timeout is
    extended only as long as the daemon keeps reporting.
    """
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                progress(f"{message} ({time.monotonic() - started:.0f} s)")
            except Exception:  # a failing callback must not kill the heartbeat silently
                log.exception("progress callback failed")

    progress(message)
    thread = threading.Thread(target=beat, name="engine-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.engine
        self.loaded = False
        self.demo = self.config.checkpoint is None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.arch: ModelArch | None = None
        self.checkpoint_path: Path | None = None
        self.model: torch.nn.Module | None = None
        self.vocoder: Vocoder | None = None
        self.sampler: FlowSampler | None = None
        #: Why engine.attention = flash ended up on sdpa (describe(), ``status``); None otherwise.
        self.attention_note: str | None = None
        self.registry: VoiceRegistry | None = None
        self.clock: ClockEmulator | None = None
        self.warmup_report: WarmupReport | None = None
        self._counters_at_ready: dict[str, int] | None = None
        self._demo_voice_dir: Path | None = None
        self._vocab: dict[str, int] = {}
        self._resamplers: dict[int, Any] = {}  # insertion order = use order
        self._resamplers_lock = threading.Lock()  # SIGHUP's voice reload and the worker both resample
        self._lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------------------

    def _resolve_device(self) -> None:
        want = self.config.device
        if want == "cuda" and not torch.cuda.is_available():
            raise EngineLoadError("engine.device = cuda, but torch sees no CUDA device")
        use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if self.device.type == "cpu":
            if self.config.dtype not in ("auto", "float32"):
                log.warning("engine.dtype %s ignored on CPU: running float32", self.config.dtype)
            self.dtype = torch.float32
        else:
            self.dtype = torch.float16 if self.config.dtype == "auto" else _DTYPES[self.config.dtype]

    def load(self, progress: Progress | None = None) -> None:
        """Model, vocoder and voices; raises EngineLoadError naming the file and the reason."""
        progress = progress or _noop
        ensure_f5_model_importable()
        self._resolve_device()
        cfg = self.config
        if self.demo:
            try:
                with _heartbeat(progress, "preparing the demo checkpoint"):
                    bundle = ensure_demo_bundle(self.settings.paths.cache_dir)
            except OSError as exc:
                raise EngineLoadError(
                    f"{self.settings.paths.cache_dir}: cannot write the demo checkpoint: {exc}"
                ) from None
            log.warning(
                "no engine.checkpoint configured: using the UNTRAINED demo model; it produces "
                "non-speech noise %s",
                kv(dir=bundle.root),
            )
            arch = read_arch(bundle.arch_path)
            checkpoint, vocab, vocoder_dir = bundle.checkpoint, bundle.vocab, bundle.vocoder_dir
            self._demo_voice_dir = bundle.voice_dir
        else:
            arch = read_arch(cfg.model)
            checkpoint = cfg.checkpoint
            if not checkpoint.is_file():  # the most likely mistake: say it before anything derived from it
                raise EngineLoadError(f"engine.checkpoint {checkpoint}: file not found")
            vocab = cfg.vocab or (checkpoint.parent / "vocab.txt")
            if cfg.vocab is None and not vocab.is_file():
                vocab = f5_default_vocab()
            vocoder_dir = cfg.vocoder_dir or (checkpoint.parent / "vocos")
            if cfg.vocoder_dir is None and not vocoder_dir.is_dir():
                raise EngineLoadError(
                    f"engine.vocoder_dir is not set and {vocoder_dir} does not exist: give the local Vocos "
                    "directory (config.yaml + pytorch_model.bin)"
                )
        try:
            with _heartbeat(progress, f"loading model {arch.name}"):
                self.model = load_model(arch, checkpoint, vocab, self.device, self.dtype)
            with _heartbeat(progress, "loading vocoder"):
                vocoder = load_vocos(vocoder_dir, self.device)
        except torch.cuda.OutOfMemoryError:
            self.model = None
            torch.cuda.empty_cache()
            raise EngineLoadError(f"{checkpoint}: not enough GPU memory to load {arch.name}") from None
        self._vocab = self.model.vocab_char_map or {}
        self.vocoder = Vocoder(vocoder, self.device, self.dtype)
        self.arch, self.checkpoint_path = arch, checkpoint

        # CPU runs eager unless a tracing-only backend is asked for (tests of the compiled path).
        compiling = cfg.compile and (self.device.type == "cuda" or cfg.compile_backend != "inductor")
        compile_mode = cfg.compile_mode if compiling else None
        pad = cfg.pad_to_buckets == "always" or (cfg.pad_to_buckets == "auto" and compile_mode is not None)
        self.sampler = FlowSampler(
            self.model,
            buckets=cfg.length_buckets if pad else None,
            compile_mode=compile_mode,
            compile_backend=cfg.compile_backend,
            cuda_graphs=cfg.cuda_graphs
            and self.device.type == "cuda"
            and compile_mode is not None
            and compile_mode not in ("reduce-overhead", "max-autotune"),  # those capture their own graphs
            dynamic=cfg.compile_dynamic,
            scope=cfg.compile_scope,
            attention=self._attention_kernel(),
        )
        self.clock = ClockEmulator(cfg.emulate_clock_devfreq) if cfg.emulate_clock_devfreq else None
        if self.clock is not None:
            log.warning("clock emulation is on (testing only) %s", kv(devfreq=cfg.emulate_clock_devfreq))

        self.registry = VoiceRegistry(self._prepare_voice, cfg.adhoc_voice_cache)
        with _heartbeat(progress, "preparing voices"):
            self.registry.configure(self.settings.voices, self._demo_voice_dir)
        self.loaded = True
        if self.settings.default_voice not in {v["id"] for v in self.registry.list()}:
            log.warning(
                "default_voice is not a configured voice: requests without a voice will fail %s",
                kv(default_voice=self.settings.default_voice),
            )
        log.info(
            "engine loaded %s",
            kv(device=self.device.type, dtype=_dtype_name(self.dtype), model=arch.name, demo=self.demo,
               voices=self.registry.available()),
        )

    def _attention_kernel(self) -> str:
        """engine.attention on this device: flash only where its check passes, else sdpa."""
        wanted = self.config.attention
        self.attention_note = None
        if wanted == "sdpa":
            return "sdpa"
        blocks = getattr(self.model.transformer, "transformer_blocks", None)
        if not blocks:
            reason = "the backbone has no attention blocks"
        else:
            attn = blocks[0].attn
            reason = flash_unavailable(self.device, self.dtype, attn.heads, attn.inner_dim // attn.heads)
        if reason is None:
            return "flash"
        self.attention_note = f"flash unavailable: {reason}"
        log.warning("engine.attention = flash cannot be used; using sdpa %s", kv(reason=reason))
        return "sdpa"

    def reload_voices(self, settings: Settings) -> None:
        """SIGHUP: re-read the voice list and files; the model stays."""
        self._require_loaded()
        self.settings = settings
        self.registry.configure(settings.voices, self._demo_voice_dir)  # type: ignore[union-attr]

    # -- voices -------------------------------------------------------------------------------------

    def _resample(self, audio: torch.Tensor, rate: int) -> torch.Tensor:
        target = self.arch.sample_rate  # type: ignore[union-attr]
        if rate == target:
            return audio
        with self._resamplers_lock:
            resampler = self._resamplers.pop(rate, None)
        if resampler is None:
            import torchaudio

            # torchaudio's polyphase kernel is (target/g) x (rate/g) taps, g = gcd: every usual
            # rate (8 k-384 kHz, 11025 and 44100 families) stays below 400 x 400; 7919 Hz would
            # take 24000 x 7919 (0.7 GB, 18 s).
            g = math.gcd(rate, target)
            if max(rate // g, target // g) > MAX_RESAMPLE_RATIO_TERM:
                raise ServiceError(
                    ErrorCode.BAD_REFERENCE,
                    f"reference sample rate {rate} Hz cannot be resampled to {target} Hz cheaply; "
                    "convert it to a usual rate (16000, 22050, 24000, 44100 or 48000 Hz)",
                )
            resampler = torchaudio.transforms.Resample(rate, target)
        with self._resamplers_lock:
            self._resamplers[rate] = resampler  # most recent last
            while len(self._resamplers) > MAX_CACHED_RESAMPLERS:
                self._resamplers.pop(next(iter(self._resamplers)))
        return resampler(audio)

    def _prepare_voice(self, audio_bytes: bytes, ref_text: str, label: str) -> PreparedVoice:
        """Prepare a reference; anything odd about the audio becomes BAD_REFERENCE, never a crash."""
        try:
            return self._prepare_voice_unchecked(audio_bytes, ref_text, label)
        except (ServiceError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:  # e.g. an absurd sample rate that the resampler refuses
            log.warning("reference preparation failed %s", kv(voice=label, error=f"{type(exc).__name__}: {exc}"))
            raise ServiceError(
                ErrorCode.BAD_REFERENCE, f"{label} audio cannot be used: {type(exc).__name__}: {exc}"
            ) from None

    def _prepare_voice_unchecked(self, audio_bytes: bytes, ref_text: str, label: str) -> PreparedVoice:
        """upstream's reference path: clip, mono, loudness lift, 24 kHz, mel -- done once per voice."""
        decoded = decode_audio(audio_bytes, what=f"{label} audio")
        clipped = clip_reference(decoded, self.config.max_ref_seconds)
        voiced = clipped.seconds - _TAIL_SECONDS
        if voiced < MIN_REFERENCE_SECONDS:
            raise ServiceError(
                ErrorCode.BAD_REFERENCE,
                f"{label} audio has {max(voiced, 0.0):.2f} s of sound after trimming silence; "
                f"at least {MIN_REFERENCE_SECONDS} s is needed",
            )
        normalized = normalize_ref_text(ref_text)
        audio = torch.from_numpy(clipped.samples)
        if audio.shape[0] > 1:
            audio = torch.mean(audio, dim=0, keepdim=True)
        rms = torch.sqrt(torch.mean(torch.square(audio)))
        target_rms = self.config.target_rms
        if rms < target_rms:
            audio = audio * target_rms / rms
        audio = self._resample(audio, clipped.sample_rate).to(self.device)
        with torch.inference_mode():
            mel = self.model.mel_spec(audio).permute(0, 2, 1).to(self.dtype)  # type: ignore[union-attr]
        ensure_f5_model_importable()
        from f5_tts.model.utils import convert_char_to_pinyin

        prompt_text = prompt_ref_text(normalized)
        prompt = VoicePrompt(
            cond=mel,
            ref_audio_len=audio.shape[-1] // self.arch.hop_length,  # type: ignore[union-attr]
            rms=rms,
            ref_text=normalized,
            prompt_text=prompt_text,
            prompt_tokens=convert_char_to_pinyin([prompt_text])[0],
        )
        return PreparedVoice(
            content_hash="", ref_text=normalized.strip(), ref_seconds=clipped.seconds, payload=prompt
        )

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
        return self.registry.list() if self.registry else []

    # -- synthesis ----------------------------------------------------------------------------------

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise ServiceError(ErrorCode.NOT_READY, "the engine is not loaded yet")

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
                     plan: str = "upstream") -> list[str]:
        """upstream's sentence chunks, with any too long for the model split further; a text that
        still cannot fit is refused before any work (TEXT_TOO_LONG), never an error mid-synthesis.

        ``plan`` ``short_first`` cuts the first chunk short as upstream's socket server does
        (docs/protocol.md, "Streaming"), so the first audio comes after a short chunk's work."""
        max_frames = self.max_frames()
        fit = max_gen_bytes(prompt.ref_audio_len, prompt.prompt_text, speed, max_frames)
        if fit < 1:
            raise ServiceError(
                ErrorCode.TEXT_TOO_LONG,
                f"this voice's reference leaves no room for text at speed {speed:g} within the model's "
                f"{max_frames} frames; use a shorter reference or a higher speed",
            )
        target = max_chunk_bytes(prompt.ref_text, ref_seconds, speed)
        limit = min(target, fit) if target > 0 else fit
        chunks = fit_chunks(chunk_text(text, target), limit)
        if plan == "short_first":
            chunks = short_first(chunks, limit)
        if not chunks:
            raise ServiceError(ErrorCode.BAD_REQUEST, "text has nothing to say after splitting into sentences")
        for chunk in chunks:
            frames = duration_frames(prompt.ref_audio_len, prompt.prompt_text, chunk, speed)
            if frames > max_frames:  # only a piece of a few bytes, spoken at upstream's 0.3 for short texts
                raise ServiceError(
                    ErrorCode.TEXT_TOO_LONG,
                    f"the piece {chunk!r} needs {frames} frames with this voice at speed {speed:g}; "
                    f"the model takes at most {max_frames}: use a shorter reference or a higher speed",
                )
        return chunks

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
        self._require_loaded()
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
        plan = params.chunk_plan or ("short_first" if sink is not None else "upstream")
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
        """Run every shape a request can produce, so nothing compiles after READY."""
        self._require_loaded()
        progress = progress or _noop
        started = time.perf_counter()
        sampler = self.sampler
        error: str | None = None
        shapes: list[int] = []
        with self._lock:
            if not self.config.warmup:
                pass
            elif sampler.buckets:  # type: ignore[union-attr]
                for bucket in sampler.buckets:  # type: ignore[union-attr]
                    message = f"warming up {bucket} frames{' (compiling)' if sampler.compiled else ''}"
                    try:
                        bucket_started = time.perf_counter()
                        with _heartbeat(progress, message):
                            self._warm_bucket(bucket)
                        log.debug("bucket warm %s", kv(frames=bucket, seconds=time.perf_counter() - bucket_started))
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        raise
                    except Exception as exc:  # inductor/triton failures come in many types
                        if not sampler.compiled:  # type: ignore[union-attr]
                            raise
                        error = f"torch.compile failed, running eager: {type(exc).__name__}: {exc}"[:500]
                        log.warning("%s", error)
                        sampler.disable_compile()  # type: ignore[union-attr]
                        with _heartbeat(progress, f"warming up {bucket} frames (eager)"):
                            self._warm_bucket(bucket)
                    shapes.append(bucket)
                self._warm_vocoder(sampler.buckets[-1], progress)  # type: ignore[union-attr]
                # One real request end to end: text front end (pinyin/jieba dictionaries load on
                # first use), voice tensors and the vocoder, so the first request after READY
                # costs what every later one does.
                with _heartbeat(progress, "warming up the text front end"):
                    self._warm_once()
            else:
                with _heartbeat(progress, "warming up"):
                    shapes.append(self._warm_once())
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if sampler.graphs is not None:  # type: ignore[union-attr]
            sampler.graphs.freeze()  # type: ignore[union-attr]
        self._counters_at_ready = compile_counters()
        report = WarmupReport(
            seconds=time.perf_counter() - started,
            shapes=shapes,
            compiled=bool(sampler.compiled),  # type: ignore[union-attr]
            error=error,
        )
        self.warmup_report = report
        log.info("warm-up done %s", kv(seconds=report.seconds, shapes=len(shapes), compiled=report.compiled))
        return report

    def _warm_vocoder(self, max_frames: int, progress: Progress) -> None:
        """CUDA graphs of the vocoder for every length a bucket can hold (else its FFT plans).

        A capture that fails leaves the vocoder eager: slower by a little, and said in the log.
        """
        vocoder = self.vocoder
        if self.sampler.graphs is not None:  # type: ignore[union-attr]
            try:
                with _heartbeat(progress, "capturing the vocoder's CUDA graphs"):
                    captured = vocoder.capture_graphs(max_frames)  # type: ignore[union-attr]
                if captured:
                    log.info("vocoder graphs captured %s", kv(lengths=captured, max_frames=max_frames))
                    return
            except Exception as exc:  # includes CUDA OOM: the eager vocoder needs less memory
                vocoder.release_graphs()  # type: ignore[union-attr]
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                log.warning("vocoder CUDA graph capture failed, running it eager %s",
                            kv(error=f"{type(exc).__name__}: {exc}"[:300]))
        with _heartbeat(progress, "warming up the vocoder's FFT plans"):
            vocoder.warm_fft_plans(max_frames)  # type: ignore[union-attr]

    def _warm_bucket(self, frames: int) -> None:
        """One sample at exactly ``frames`` (fills the bucket) plus the vocoder on its output length."""
        n_mels = self.model.num_channels  # type: ignore[union-attr]
        ref_frames = max(1, frames // 3)
        generator = torch.Generator(device=self.device).manual_seed(0)
        cond = torch.randn(1, ref_frames, n_mels, generator=generator, device=self.device).to(self.dtype)
        vocab_size = max(len(self._vocab), 1)
        text = torch.randint(0, vocab_size, (1, max(1, frames // 6)), generator=generator, device=self.device)
        if self.sampler.graphs is not None:  # type: ignore[union-attr]
            # Each step count served from a CUDA graph is captured here: the default and the extras.
            step_counts = sorted({self.config.nfe_step, *self.config.cuda_graph_nfe})
        else:
            # Three calls: enough for cudagraph trees (reduce-overhead) to warm up, record and replay.
            step_counts = [min(3, self.config.nfe_step)]
        for steps in step_counts:
            out = self.sampler.sample(  # type: ignore[union-attr]
                cond, text, frames, steps=steps, cfg_strength=self.config.cfg_strength,
                sway_sampling_coef=self.config.sway_sampling_coef, generator=generator,
            )
        with torch.inference_mode():
            self._vocode(out.to(torch.float32)[:, ref_frames:, :].permute(0, 2, 1))

    def _warm_once(self) -> int:
        """CPU / no buckets: one short real synthesis (default voice if it works, else a synthetic one)."""
        result = self._synthesize_with(self._warmup_voice(), SynthesizeParams(text="Warm up.", seed=0))
        return result.mel_frames

    def _warmup_voice(self) -> PreparedVoice:
        try:
            return self.registry.get(self.settings.default_voice)  # type: ignore[union-attr]
        except ServiceError:
            import io

            import soundfile as sf

            from ishowtts_edge.engine.demo import synth_reference_wave

            buf = io.BytesIO()
            sf.write(buf, synth_reference_wave(), 24000, format="WAV", subtype="PCM_16")
            return self._prepare_voice(buf.getvalue(), "Warm up reference.", "warm-up")

    def _synthesize_with(self, voice: PreparedVoice, params: SynthesizeParams) -> SynthesisResult:
        opts = self._options(params)
        generator = torch.Generator(device=self.device).manual_seed(opts["seed"])
        wave, frames, processed = self._chunk(voice.payload, params.text, opts, generator)
        return SynthesisResult(wave, self.arch.sample_rate, 0.0, frames, opts["nfe_step"],  # type: ignore[union-attr]
                               model_frames=processed)

    # -- status -------------------------------------------------------------------------------------

    def recompiles_since_ready(self) -> int | None:
        if self._counters_at_ready is None:
            return None
        now = compile_counters()
        return now["graphs"] - self._counters_at_ready["graphs"]

    def describe(self) -> dict[str, Any]:
        arch = self.arch
        sampler = self.sampler
        return {
            "device": self.device.type,
            "dtype": _dtype_name(self.dtype),
            "model": arch.name if arch else self.config.model,
            "arch": {"backbone": arch.backbone, **{k: arch.arch.get(k) for k in ("dim", "depth", "heads")}}
            if arch
            else None,
            "checkpoint": str(self.checkpoint_path) if self.checkpoint_path else None,
            "demo": self.demo,
            "loaded": self.loaded,
            "compiled": bool(sampler and sampler.compiled),
            "compile_mode": self.config.compile_mode if sampler and sampler.compiled else None,
            "compile_backend": self.config.compile_backend if sampler and sampler.compiled else None,
            "compile_scope": self.config.compile_scope if sampler and sampler.compiled else None,
            "buckets": list(sampler.buckets) if sampler else [],
            "attention": sampler.attention if sampler else None,
            "attention_note": self.attention_note,
            "vocoder_graphs": self.vocoder.graphed_lengths if self.vocoder else 0,
            "recompiles_since_ready": self.recompiles_since_ready(),
            "warmup_seconds": round(self.warmup_report.seconds, 3) if self.warmup_report else None,
            "warmup_error": self.warmup_report.error if self.warmup_report else None,
            "voices": len(self.registry) if self.registry else 0,
            "voices_available": self.registry.available() if self.registry else 0,
            "sample_rate": arch.sample_rate if arch else None,
            "nfe_step": self.config.nfe_step,
            "clock_emulation": str(self.config.emulate_clock_devfreq) if self.clock else None,
        }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
