"""How a request's text is cut into chunks: upstream's plan, and the plan a stream uses.

Every chunk is one pass of the transformer over the reference *and* the chunk's text:
each pass pays for the reference's frames again (a 5.3 s reference is ~500 frames), and
on a fast GPU a short pass costs nearly as much as a long one.  So a stream's plan does
two things.  Its first chunk is short, so the first audio comes after a short pass
whatever the length of the text; it is filled with words up to the length bucket that
pass runs in anyway.  And the text after it is packed into one chunk fewer than
upstream's plan has, where the model's length allows, so the stream costs the same
number of passes over the reference as the one-reply request.  A text that upstream
speaks in one chunk is cut for a stream only when it is long (``split_min_s``): below
that the extra pass costs more than the earlier start gains.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ishowtts_edge.engine.text import (
    _nbytes,
    chunk_text,
    duration_frames,
    fit_chunks,
    max_chunk_bytes,
    max_gen_bytes,
    pack_sentences,
    split_sentences,
)
from ishowtts_edge.protocol import ErrorCode, ServiceError

UPSTREAM = "upstream"
SHORT_FIRST = "short_first"
#: upstream's duration rule speaks a text of under 10 bytes at speed 0.3: a first chunk is
#: never cut that short (it would be drawn out, and take more frames, not fewer).
MIN_PIECE_BYTES = 10
#: F5-TTS was trained on clips of at most 30 s: a stream's repacked chunks, reference
#: included, stay within that.
TRAINED_SECONDS = 30.0

#: Where a first piece may end, strongest first: a sentence, a clause, a word.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)|(?<=[。！？])")
_CLAUSE_END = re.compile(r"(?<=[,;:、，；：…—–])")
_WORD_END = re.compile(r"(?<=\S)(?=\s)")


@dataclass(frozen=True)
class Pace:
    """A voice at a speed: the mel frames a text needs, by upstream's duration rule."""

    ref_frames: int
    #: The reference transcript as tokenised (upstream's prompt text, trailing space included).
    prompt_text: str
    speed: float
    frames_per_second: float

    def frames(self, gen_text: str) -> int:
        """Reference plus ``gen_text``: the length of the pass that speaks it."""
        return duration_frames(self.ref_frames, self.prompt_text, gen_text, self.speed)

    def bytes_within(self, frames: int) -> int:
        """The most bytes of text whose pass stays within ``frames`` (reference included)."""
        return max_gen_bytes(self.ref_frames, self.prompt_text, self.speed, frames)


@dataclass(frozen=True)
class StreamShape:
    """The stream plan's two settings (``engine.stream_first_chunk_s``, ``engine.stream_split_min_s``)."""

    first_chunk_s: float = 1.0
    split_min_s: float = 8.0


def plan_chunks(
    text: str,
    pace: Pace,
    ref_text: str,
    ref_seconds: float,
    *,
    max_frames: int,
    plan: str = UPSTREAM,
    bucket_for: Callable[[int], int | None] = lambda frames: None,
    largest_bucket: int | None = None,
    stream: StreamShape = StreamShape(),
) -> list[str]:
    """The chunks of ``text``: upstream's sentence chunks, any too long for the model split
    further; with ``plan`` short_first, the stream's plan (module docstring).

    A text that still cannot fit is refused before any work (TEXT_TOO_LONG), never an error
    mid-synthesis.
    """
    fit = pace.bytes_within(max_frames)
    if fit < 1:
        raise ServiceError(
            ErrorCode.TEXT_TOO_LONG,
            f"this voice's reference leaves no room for text at speed {pace.speed:g} within the model's "
            f"{max_frames} frames; use a shorter reference or a higher speed",
        )
    target = max_chunk_bytes(ref_text, ref_seconds, pace.speed)
    limit = min(target, fit) if target > 0 else fit
    chunks = fit_chunks(chunk_text(text, target), limit)
    if plan == SHORT_FIRST:
        cap_frames = min(max_frames, largest_bucket or max_frames, int(TRAINED_SECONDS * pace.frames_per_second))
        chunks = stream_chunks(text, chunks, limit, pace, bucket_for=bucket_for,
                               cap_bytes=pace.bytes_within(cap_frames), stream=stream)
    if not chunks:
        raise ServiceError(ErrorCode.BAD_REQUEST, "text has nothing to say after splitting into sentences")
    for chunk in chunks:
        frames = pace.frames(chunk)
        if frames > max_frames:  # only a piece of a few bytes, spoken at upstream's 0.3 for short texts
            raise ServiceError(
                ErrorCode.TEXT_TOO_LONG,
                f"the piece {chunk!r} needs {frames} frames with this voice at speed {pace.speed:g}; "
                f"the model takes at most {max_frames}: use a shorter reference or a higher speed",
            )
    return chunks


def stream_chunks(
    text: str,
    chunks: list[str],
    limit: int,
    pace: Pace,
    *,
    bucket_for: Callable[[int], int | None],
    cap_bytes: int,
    stream: StreamShape,
) -> list[str]:
    """Upstream's ``chunks`` of ``text`` (each at most ``limit`` bytes) re-cut for a stream: a
    short first chunk, then the rest of ``text`` in as many chunks as upstream's plan had after
    its first, each at most ``cap_bytes``; where that cannot be done, the rest in upstream's sizes."""
    if not chunks:
        return chunks
    fps = pace.frames_per_second
    speech = sum(pace.frames(c) - pace.ref_frames for c in chunks)
    if len(chunks) == 1 and speech < stream.split_min_s * fps:
        return chunks
    least = pace.ref_frames + math.ceil(stream.first_chunk_s * fps)
    room = bucket_for(least) or least
    first, _ = cut_prefix(chunks[0], lambda piece: pace.frames(piece) <= room)
    rest = text_after(text, first)
    if not rest:
        return [first]
    return [first, *repack(rest, limit, max(cap_bytes, limit), max(len(chunks) - 1, 1))]


def repack(text: str, limit: int, cap: int, count: int) -> list[str]:
    """``text`` in upstream's chunks of ``limit`` bytes, or in at most ``count`` chunks of the
    fewest bytes (up to ``cap``) that allow it; upstream's when even ``cap`` needs more."""
    sentences = split_sentences(text)

    def pieces(size: int) -> list[str]:
        return fit_chunks(pack_sentences(sentences, size), size)

    plain = pieces(limit)
    if len(plain) <= count or len(pieces(cap)) > count:
        return plain
    low, high = limit, cap  # pieces(low) needs more than count, pieces(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if len(pieces(middle)) <= count:
            high = middle
        else:
            low = middle
    return pieces(high)


def cut_prefix(chunk: str, fits: Callable[[str], bool]) -> tuple[str, str]:
    """``chunk`` as (first piece, the rest): the longest piece that ``fits`` (and has at least
    :data:`MIN_PIECE_BYTES`) ending at a sentence end, else at a clause mark, else between
    words; between characters only in text without spaces.  When none fits, the shortest
    piece of at least MIN_PIECE_BYTES that ends between words (or characters)."""
    if fits(chunk):
        return chunk, ""
    words = _ends(chunk, _WORD_END)
    ends_by_strength = [_ends(chunk, _SENTENCE_END), _ends(chunk, _CLAUSE_END), words]
    if not words:
        ends_by_strength.append(list(range(1, len(chunk))))
    for ends in ends_by_strength:
        fitting = [end for end in ends if _nbytes(chunk[:end].strip()) >= MIN_PIECE_BYTES and fits(chunk[:end].strip())]
        if fitting:
            return _split_at(chunk, max(fitting))
    long_enough = [end for end in ends_by_strength[-1] if _nbytes(chunk[:end].strip()) >= MIN_PIECE_BYTES]
    return _split_at(chunk, min(long_enough)) if long_enough else (chunk, "")


def text_after(text: str, piece: str) -> str:
    """``text`` after its first characters that spell ``piece``, whitespace aside: the chunkers
    keep every other character in order, and the original keeps the spaces between words
    (or their absence, in scripts without spaces) that a join of chunks would have to guess."""
    left = sum(1 for ch in piece if not ch.isspace())
    for index, ch in enumerate(text):
        if not left:
            return text[index:].strip()
        if not ch.isspace():
            left -= 1
    return ""


def _ends(chunk: str, pattern: re.Pattern[str]) -> list[int]:
    """Where ``pattern`` would split ``chunk``, with text left on both sides."""
    return [m.start() for m in pattern.finditer(chunk) if chunk[: m.start()].strip() and chunk[m.start():].strip()]


def _split_at(chunk: str, end: int) -> tuple[str, str]:
    return chunk[:end].strip(), chunk[end:].strip()
