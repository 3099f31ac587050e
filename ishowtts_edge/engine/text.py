"""Upstream f5-tts's text rules, reimplemented so the daemon never imports utils_infer.

``f5_tts.infer.utils_infer`` pulls in transformers, matplotlib and pydub at import;
these few rules are all the engine needs from it.  tests/test_engine_equivalence.py
checks each against upstream.
"""

from __future__ import annotations

import re

import numpy as np

_SENTENCE_SPLIT = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def chunk_text(text: str, max_chars: int = 135) -> list[str]:
    """upstream chunk_text: greedy sentences into chunks of at most ``max_chars`` UTF-8 bytes."""
    return pack_sentences(split_sentences(text), max_chars)


def split_sentences(text: str) -> list[tuple[str, int, int]]:
    """upstream's sentence split, each as (piece, its bytes, its bytes with the piece's space):
    computed once when a text is packed at several sizes."""
    out = []
    for sentence in _SENTENCE_SPLIT.split(text):
        if not sentence:
            continue
        size = _nbytes(sentence)
        spaced = _nbytes(sentence[-1]) == 1  # upstream adds a space after a single-byte ending
        out.append((sentence + " " if spaced else sentence, size, size + 1 if spaced else size))
    return out


def pack_sentences(sentences: list[tuple[str, int, int]], max_chars: int) -> list[str]:
    """The packing half of :func:`chunk_text`, on :func:`split_sentences`' output."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0  # bytes of "".join(current), spaces included, as upstream measures it
    for piece, sentence_bytes, piece_bytes in sentences:
        if size + sentence_bytes <= max_chars:
            current.append(piece)
            size += piece_bytes
        else:
            if current:
                chunks.append("".join(current).strip())
            current, size = [piece], piece_bytes
    if current:
        chunks.append("".join(current).strip())
    return chunks


#: Where a clause may end inside a sentence that has no sentence break ("a, b" is already split
#: by chunk_text; these also catch marks with no space after them and CJK ones).
_CLAUSE_SPLIT = re.compile(r"(?<=[,;:、，；：…—–])")
_SPACE_SPLIT = re.compile(r"(?<=\s)(?=\S)")


def fit_chunks(chunks: list[str], max_bytes: int) -> list[str]:
    """Split every chunk longer than ``max_bytes`` UTF-8 bytes: at clause marks, then at spaces,
    then between characters (scripts without spaces), each piece packed greedily.

    upstream's chunk_text keeps a sentence with no break whole however long it is, and a
    1000-character run-on then needs more frames than the model's positions hold.
    """
    limit = max(max_bytes, 1)
    out: list[str] = []
    for chunk in chunks:
        out.extend(piece for piece in _split(chunk, limit, 0) if piece.strip())
    return out


def _split(text: str, limit: int, level: int) -> list[str]:
    if _nbytes(text) <= limit:
        return [text.strip()]
    if level == 0:
        units = _CLAUSE_SPLIT.split(text)
    elif level == 1:
        units = _SPACE_SPLIT.split(text)
    else:
        units = list(text)
    if len(units) < 2:
        return _split(text, limit, level + 1)
    pieces: list[str] = []
    current = ""
    for unit in units:
        if _nbytes(current + unit.rstrip()) <= limit:
            current += unit
            continue
        if current.strip():
            pieces.append(current.strip())
        current = ""
        if _nbytes(unit.rstrip()) > limit:
            pieces.extend(_split(unit, limit, level + 1))
        else:
            current = unit
    if current.strip():
        pieces.append(current.strip())
    return pieces


def max_gen_bytes(ref_audio_len: int, ref_text: str, speed: float, max_frames: int) -> int:
    """The most bytes of new text whose :func:`duration_frames` stays within ``max_frames``."""
    room = max_frames - ref_audio_len
    if room <= 0:
        return 0
    return int(room * speed * _nbytes(ref_text) / ref_audio_len)


def max_chunk_bytes(ref_text: str, ref_seconds: float, speed: float) -> int:
    """upstream infer_process: the reference's bytes/second times the ~22 s left for generation."""
    return int(_nbytes(ref_text) / ref_seconds * (22 - ref_seconds) * speed)


def prompt_ref_text(ref_text: str) -> str:
    """upstream infer_batch_process: a space after a final single-byte character."""
    return ref_text + " " if _nbytes(ref_text[-1]) == 1 else ref_text


def duration_frames(ref_audio_len: int, ref_text: str, gen_text: str, speed: float) -> int:
    """upstream's total frame count: reference frames plus the reference's pace applied to the new text.

    ``ref_text`` is the prompt text (after :func:`prompt_ref_text`).  Very short texts
    (< 10 bytes) are spoken at speed 0.3, as upstream does.
    """
    local_speed = 0.3 if _nbytes(gen_text) < 10 else speed
    return ref_audio_len + int(ref_audio_len / _nbytes(ref_text) * _nbytes(gen_text) / local_speed)


def cross_fade(waves: list[np.ndarray], cross_fade_seconds: float, sample_rate: int) -> np.ndarray:
    """upstream's linear cross-fade between consecutive chunk waveforms."""
    if cross_fade_seconds <= 0:
        return np.concatenate(waves)
    final = waves[0]
    for following in waves[1:]:
        samples = min(int(cross_fade_seconds * sample_rate), len(final), len(following))
        if samples <= 0:
            final = np.concatenate([final, following])
            continue
        overlap = final[-samples:] * np.linspace(1, 0, samples) + following[:samples] * np.linspace(0, 1, samples)
        final = np.concatenate([final[:-samples], overlap, following[samples:]])
    return final


class CrossFader:
    """:func:`cross_fade` one chunk at a time: each :meth:`push` returns the samples that are final.

    Only the tail that the next chunk's fade changes is held back (``cross_fade_seconds``);
    :meth:`finish` returns it.  The pieces concatenated equal :func:`cross_fade` of all the
    chunks exactly, sample for sample (the held tail keeps the dtype cross_fade computes in).
    """

    def __init__(self, cross_fade_seconds: float, sample_rate: int) -> None:
        self.fade = int(cross_fade_seconds * sample_rate) if cross_fade_seconds > 0 else 0
        self._held: np.ndarray | None = None
        #: Samples handed out so far plus held: cross_fade's ``len(final)``.
        self._length = 0

    def push(self, wave: np.ndarray) -> np.ndarray:
        held = self._held
        if held is None:
            tail = wave
            self._length = len(wave)
        else:
            samples = min(self.fade, self._length, len(wave))  # what cross_fade fades over
            if samples <= 0:
                tail = np.concatenate([held, wave])
            else:  # held is final's last min(fade, len(final)) samples: the overlap lies within it
                overlap = held[-samples:] * np.linspace(1, 0, samples) + wave[:samples] * np.linspace(0, 1, samples)
                tail = np.concatenate([held[:-samples], overlap, wave[samples:]])
            self._length += len(wave) - max(samples, 0)
        keep = min(self.fade, len(tail))
        self._held = tail[len(tail) - keep:]
        return tail[: len(tail) - keep]

    def finish(self) -> np.ndarray:
        held, self._held = self._held, None
        return held if held is not None else np.zeros(0, dtype=np.float32)
