"""Reference audio: decode, clip and normalise it the way upstream f5-tts does.

Upstream (``preprocess_ref_audio_text``) runs pydub: split on long silences and keep
at most ~12 s, fall back to short silences, hard-cut at 12 s, trim leading/trailing
silence below -42 dBFS and append 50 ms of silence; ``infer_batch_process`` then
down-mixes to mono, raises the level to ``target_rms`` when quieter, and resamples
to 24 kHz.  pydub needs no FFmpeg for WAV but is a heavy, audioop-based dependency
(audioop is gone in Python 3.13), so the same arithmetic is redone here with numpy:
millisecond slicing with pydub's rounding, integer RMS on the 16-bit scale, the same
range merging.  tests/test_engine_reference.py checks it against pydub itself.

Audio is decoded with soundfile (libsndfile), never torchaudio.load, which needs FFmpeg.
"""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ishowtts_edge.protocol import ErrorCode, ServiceError

#: pydub's 16-bit full scale; thresholds are compared on this integer scale.
_FULL_SCALE = 32768.0
#: pydub's AudioSegment.silent() default frame rate; its 50 ms tail is resampled from it.
_SILENT_RATE = 11025
#: A reference shorter than this after trimming carries no usable voice.
MIN_REFERENCE_SECONDS = 0.3
#: Longest reference decoded at all.  Upstream keeps at most ~12 s of it, and a compressed
#: file's size says little about its length: 825 KB of FLAC silence is 60 min, 5.5 GB decoded.
MAX_REFERENCE_SECONDS = 120.0
#: Frames x channels decoded at most (128 MiB of float32), for many-channel or high-rate files.
MAX_REFERENCE_SAMPLES = 1 << 25
#: What to do about a reference refused for its length or size.
TRIM_ADVICE = "at most ~12 s of a reference is used: cut a clean 5-12 s passage"


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32, (channels, frames), full scale 1.0
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.sample_rate


def decode_audio(data: bytes | Path, *, what: str = "reference audio") -> DecodedAudio:
    """Decode WAV/FLAC/OGG bytes or a file; any failure is ServiceError(BAD_REFERENCE)."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else str(data)
    if isinstance(source, io.BytesIO) and not source.getbuffer().nbytes:
        raise ServiceError(ErrorCode.BAD_REFERENCE, f"{what} is empty")
    try:
        with sf.SoundFile(source) as audio:
            _check_length(audio.frames, audio.samplerate, audio.channels, what)
            samples, rate = audio.read(dtype="float32", always_2d=True), audio.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise ServiceError(
            ErrorCode.BAD_REFERENCE, f"{what} cannot be decoded (WAV, FLAC or OGG expected): {exc}"
        ) from None
    if samples.size == 0 or rate <= 0:
        raise ServiceError(ErrorCode.BAD_REFERENCE, f"{what} holds no samples")
    if not np.all(np.isfinite(samples)):
        raise ServiceError(ErrorCode.BAD_REFERENCE, f"{what} contains NaN or infinite samples")
    return DecodedAudio(np.ascontiguousarray(samples.T), int(rate))


def _check_length(frames: int, rate: int, channels: int, what: str) -> None:
    """Refuse from the header what would be too long to decode, before decoding it."""
    if rate > 0 and frames / rate > MAX_REFERENCE_SECONDS:
        raise ServiceError(
            ErrorCode.BAD_REFERENCE,
            f"{what} is {frames / rate:.0f} s long; the limit is {MAX_REFERENCE_SECONDS:.0f} s ({TRIM_ADVICE})",
        )
    if frames * channels > MAX_REFERENCE_SAMPLES:
        raise ServiceError(
            ErrorCode.BAD_REFERENCE,
            f"{what} has {channels} channels x {frames} frames; the limit is {MAX_REFERENCE_SAMPLES} samples "
            "(send mono or stereo at a usual rate)",
        )


# --- pydub arithmetic on (channels, frames) arrays on the 16-bit scale -----------------------


def _len_ms(frames: int, rate: int) -> int:
    return round(1000 * (float(frames) / rate))


def _slice_ms(x: np.ndarray, rate: int, start: int | None = None, end: int | None = None) -> np.ndarray:
    """``AudioSegment[start:end]``: ms -> frames by truncation, zero fill of a short tail."""
    length = _len_ms(x.shape[1], rate)
    start = 0 if start is None else start
    end = length if end is None else end
    if start < 0:
        start = length - abs(start)
    if end < 0:
        end = length - abs(end)
    start, end = min(start, length), min(end, length)
    first = int(start * (rate / 1000.0))
    last = int(end * (rate / 1000.0))
    data = x[:, first:last]
    missing = (last - first) - data.shape[1]
    if missing > 0:
        data = np.concatenate([data, np.zeros((x.shape[0], missing), dtype=x.dtype)], axis=1)
    return data


class _Rms:
    """audioop.rms of any ms slice, from a prefix sum (exact for 16-bit integer samples)."""

    def __init__(self, x: np.ndarray, rate: int) -> None:
        self.rate = rate
        self.channels = x.shape[0]
        self.frames = x.shape[1]
        self.length = _len_ms(self.frames, rate)
        self.prefix = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64).sum(axis=0))])

    def __call__(self, start: int, end: int) -> int:
        start, end = min(start, self.length), min(end, self.length)
        first = int(start * (self.rate / 1000.0))
        last = int(end * (self.rate / 1000.0))
        count = (last - first) * self.channels
        if count <= 0:
            return 0
        lo, hi = min(first, self.frames), min(last, self.frames)
        total = self.prefix[hi] - self.prefix[lo]
        return int(math.sqrt(total / count))


def _detect_silence(x: np.ndarray, rate: int, min_silence_len: int, silence_thresh: float, seek_step: int):
    rms = _Rms(x, rate)
    seg_len = rms.length
    if seg_len < min_silence_len:
        return []
    threshold = 10 ** (float(silence_thresh) / 20) * _FULL_SCALE
    last_slice_start = seg_len - min_silence_len
    slice_starts = range(0, last_slice_start + 1, seek_step)
    if last_slice_start % seek_step:
        slice_starts = itertools.chain(slice_starts, [last_slice_start])
    starts = [i for i in slice_starts if rms(i, i + min_silence_len) <= threshold]
    if not starts:
        return []
    ranges = []
    prev = starts.pop(0)
    current = prev
    for i in starts:
        continuous = i == prev + seek_step
        has_gap = i > prev + min_silence_len
        if not continuous and has_gap:
            ranges.append([current, prev + min_silence_len])
            current = i
        prev = i
    ranges.append([current, prev + min_silence_len])
    return ranges


def _detect_nonsilent(x, rate, min_silence_len, silence_thresh, seek_step):
    silent = _detect_silence(x, rate, min_silence_len, silence_thresh, seek_step)
    len_seg = _len_ms(x.shape[1], rate)
    if not silent:
        return [[0, len_seg]]
    if silent[0][0] == 0 and silent[0][1] == len_seg:
        return []
    prev_end = 0
    ranges = []
    for start, end in silent:
        ranges.append([prev_end, start])
        prev_end = end
    if end != len_seg:
        ranges.append([prev_end, len_seg])
    if ranges[0] == [0, 0]:
        ranges.pop(0)
    return ranges


def _split_on_silence(x, rate, min_silence_len, silence_thresh, keep_silence, seek_step) -> list[np.ndarray]:
    ranges = [
        [start - keep_silence, end + keep_silence]
        for start, end in _detect_nonsilent(x, rate, min_silence_len, silence_thresh, seek_step)
    ]
    for left, right in zip(ranges, ranges[1:]):
        if right[0] < left[1]:
            left[1] = (left[1] + right[0]) // 2
            right[0] = left[1]
    length = _len_ms(x.shape[1], rate)
    return [_slice_ms(x, rate, max(start, 0), min(end, length)) for start, end in ranges]


def _leading_silence_ms(x: np.ndarray, rate: int, threshold_db: float = -42.0, chunk_ms: int = 10) -> int:
    rms = _Rms(x, rate)
    trim = 0
    while trim < rms.length:
        value = rms(trim, trim + chunk_ms)
        dbfs = -math.inf if not value else 20 * math.log(value / _FULL_SCALE, 10)
        if not dbfs < threshold_db:
            break
        trim += chunk_ms
    return min(trim, rms.length)


def _remove_silence_edges(x: np.ndarray, rate: int) -> np.ndarray:
    x = _slice_ms(x, rate, _leading_silence_ms(x, rate), None)
    tail = _leading_silence_ms(x[:, ::-1], rate)
    if tail > 0:
        x = _slice_ms(x, rate, None, _len_ms(x.shape[1], rate) - tail)
    return x


def _collect(segments: list[np.ndarray], rate: int, limit_ms: int, channels: int) -> np.ndarray:
    """Append whole segments while the result stays under the limit (once past half of it)."""
    wave = np.zeros((channels, 0))
    for segment in segments:
        if _len_ms(wave.shape[1], rate) > limit_ms // 2 and _len_ms(wave.shape[1] + segment.shape[1], rate) > limit_ms:
            break
        wave = np.concatenate([wave, segment], axis=1)
    return wave


def _tail_frames(rate: int) -> int:
    """Frames of upstream's appended ``AudioSegment.silent(50)`` after audioop.ratecv to ``rate``."""
    frames = int(_SILENT_RATE * (50 / 1000.0))
    if rate == _SILENT_RATE:
        return frames
    return (frames - 1) * rate // _SILENT_RATE + 1


def clip_reference(audio: DecodedAudio, max_seconds: float = 12.0) -> DecodedAudio:
    """upstream preprocess_ref_audio_text's audio part, sample-exact for 16-bit input at >= 11025 Hz."""
    rate = audio.sample_rate
    channels = audio.samples.shape[0]
    x = audio.samples.astype(np.float64) * _FULL_SCALE
    limit_ms = int(round(max_seconds * 1000))
    wave = _collect(_split_on_silence(x, rate, 1000, -50, 1000, 10), rate, limit_ms, channels)
    if _len_ms(wave.shape[1], rate) > limit_ms:
        wave = _collect(_split_on_silence(x, rate, 100, -40, 1000, 10), rate, limit_ms, channels)
    if _len_ms(wave.shape[1], rate) > limit_ms:
        wave = _slice_ms(wave, rate, None, limit_ms)
    wave = _remove_silence_edges(wave, rate)
    wave = np.concatenate([wave, np.zeros((channels, _tail_frames(rate)))], axis=1)
    return DecodedAudio((wave / _FULL_SCALE).astype(np.float32), rate)


def normalize_ref_text(ref_text: str) -> str:
    """upstream: make the transcript end in a sentence stop (". " or "。")."""
    if not ref_text.endswith(". ") and not ref_text.endswith("。"):
        if ref_text.endswith("."):
            ref_text += " "
        else:
            ref_text += ". "
    return ref_text
