"""The chunk plans (engine/plan.py) with the bench's voice: f5-tts's English example reference
as the engine prepares it (clipped to 4.96 s: 465 frames; upstream's two trailing spaces on its
prompt text) and the engine's default length buckets."""

from __future__ import annotations

import random

import pytest

from ishowtts_edge.bench.texts import TEXTS, long_text
from ishowtts_edge.engine.plan import (
    MIN_PIECE_BYTES,
    SHORT_FIRST,
    UPSTREAM,
    Pace,
    StreamShape,
    cut_prefix,
    plan_chunks,
)
from ishowtts_edge.protocol import ErrorCode, ServiceError

REF_TEXT = "Some call me nature, others call me mother nature."
REF_SECONDS = 4.963
FPS = 24000 / 256
PACE = Pace(465, REF_TEXT + "  ", 1.0, FPS)
BUCKETS = list(range(256, 2561, 128))
CHINESE = "我们今天一起去公园散步，然后回家吃饭。天气很好，大家都很开心！" * 12


def bucket_for(frames: int) -> int | None:
    return next((b for b in BUCKETS if b >= frames), None)


def plan(text: str, which: str = SHORT_FIRST, pace: Pace = PACE, stream: StreamShape = StreamShape(),
         max_frames: int = 8192) -> list[str]:
    return plan_chunks(text, pace, REF_TEXT, REF_SECONDS, max_frames=max_frames, plan=which, bucket_for=bucket_for,
                       largest_bucket=BUCKETS[-1], stream=stream)


def words(chunks: list[str]) -> list[str]:
    return " ".join(chunks).split()


@pytest.mark.parametrize("name", ["paragraph", "long"])
def test_a_stream_starts_with_a_pass_in_the_smallest_bucket_and_costs_no_extra_pass(name: str) -> None:
    text = TEXTS["paragraph"] if name == "paragraph" else long_text()
    upstream, stream = plan(text, UPSTREAM), plan(text)
    assert len(upstream) >= 2
    assert len(stream) <= len(upstream)  # fewer where sentences pack better into the larger chunks
    # The reference (465 frames) plus a second of speech needs bucket 640: the first chunk fills it.
    assert bucket_for(PACE.frames(stream[0])) == 640
    assert PACE.frames(stream[0]) > 465 + FPS  # at least the second of speech asked for
    assert words(stream) == text.split()
    # Every repacked chunk stays within the largest bucket and the 30 s the model was trained on.
    assert all(PACE.frames(c) <= min(BUCKETS[-1], 30 * FPS) for c in stream)


def test_the_paragraphs_first_piece_ends_between_words_and_the_rest_is_one_chunk() -> None:
    stream = plan(TEXTS["paragraph"])
    # 640 frames leave 175 for speech: 19 bytes at this voice's pace; no sentence or clause end fits.
    assert stream[0] == "Welcome back to the"
    assert stream[1].startswith("stream, everyone.")


def test_a_text_that_fits_one_chunk_is_cut_only_when_its_speech_is_long() -> None:
    chat = TEXTS["chat"]  # ~6 s of speech
    assert plan(chat) == plan(chat, UPSTREAM) == [chat]
    cut = plan(chat, stream=StreamShape(split_min_s=4.0))
    assert len(cut) == 2 and words(cut) == chat.split()
    assert cut[0] == "lol that clutch was"  # the clause end ("insane,") does not fit the bucket
    assert bucket_for(PACE.frames(cut[0])) == 640


def test_a_longer_first_chunk_setting_fills_a_larger_bucket() -> None:
    stream = plan(TEXTS["paragraph"], stream=StreamShape(first_chunk_s=3.0))
    assert bucket_for(PACE.frames(stream[0])) == 768
    assert stream[0] == "Welcome back to the stream,"  # a clause end fits 768 frames


def within(limit: int):
    return lambda piece: len(piece.encode()) <= limit


def test_the_first_piece_prefers_a_sentence_then_a_clause_then_a_word() -> None:
    assert cut_prefix("Hi there you. How are you doing today, friend?", within(30)) == (
        "Hi there you.", "How are you doing today, friend?")
    assert cut_prefix("Well then, how are you doing today my friend?", within(30)) == (
        "Well then,", "how are you doing today my friend?")
    assert cut_prefix("Tell me how you are doing today my friend?", within(20)) == ("Tell me how you are", "doing today my friend?")
    assert cut_prefix("Short.", within(3)) == ("Short.", "")


def test_the_first_piece_is_never_under_ten_bytes_which_upstream_would_draw_out() -> None:
    # "Hi there." is 9 bytes: upstream would speak it at speed 0.3, so the word after it comes too.
    assert cut_prefix("Hi there. How are you doing today, friend?", within(30))[0] == "Hi there. How are you doing"
    first, rest = cut_prefix("Hi. Supercalifragilisticexpialidocious words follow here", within(9))
    assert first == "Hi. Supercalifragilisticexpialidocious"  # nothing fits: the shortest piece that is long enough
    rng = random.Random(7)
    for _ in range(300):
        text = " ".join(rng.choice(["a", "bb", "ccc", "dddd.", "e,", "ffffff"]) for _ in range(30))
        first, rest = cut_prefix(text, within(rng.randint(1, 40)))
        assert len(first.encode()) >= MIN_PIECE_BYTES or not rest
        assert (first + " " + rest).split() == text.split()  # never inside a word


def test_chinese_without_spaces_is_cut_at_a_mark_or_between_characters() -> None:
    stream = plan(CHINESE)
    assert "".join(stream) == CHINESE
    assert bucket_for(PACE.frames(stream[0])) == 640
    assert len(stream) == len(plan(CHINESE, UPSTREAM))


def test_when_the_cap_cannot_save_the_pass_the_rest_keeps_upstreams_sizes() -> None:
    # Twice as fast a voice speaks twice the text per frame: upstream's chunks are then already
    # near the cap, and the rest after a short first chunk cannot fit one chunk fewer.
    text = long_text(600)
    upstream = plan(text, UPSTREAM)
    stream = plan(text)
    assert len(stream) in (len(upstream), len(upstream) + 1)
    if len(stream) == len(upstream) + 1:
        assert stream[1:] == plan(" ".join(words(stream[1:])), UPSTREAM)
    # A cap below upstream's own chunk size leaves upstream's plan after the first piece.
    tight = plan_chunks(text, PACE, REF_TEXT, REF_SECONDS, max_frames=8192, plan=SHORT_FIRST, bucket_for=bucket_for,
                        largest_bucket=1024)
    assert len(tight) == len(upstream) + 1 and words(tight) == text.split()


@pytest.mark.parametrize("seed", range(5))
def test_every_plan_keeps_every_word_in_order_and_fits_the_model(seed: int) -> None:
    rng = random.Random(seed)
    vocabulary = ["the", "quick", "fox,", "jumps.", "over", "a", "lazy", "dog!", "well;", "ok?", "marché", "парк",
                  "гулять.", "학교에", "🙂", "naïve,"]
    cjk = ["我们", "公园。"]
    for _ in range(40):
        spaced = rng.random() < 0.5  # words between spaces are kept apart in every chunk
        words_of_text = [rng.choice(vocabulary if spaced else vocabulary + cjk) for _ in range(rng.randint(1, 300))]
        text = " ".join(words_of_text)
        speed = rng.choice([0.5, 1.0, 2.0])
        pace = Pace(rng.choice([200, 497, 1100]), REF_TEXT + " ", speed, FPS)
        for which in (UPSTREAM, SHORT_FIRST):
            chunks = plan(text, which, pace, StreamShape(rng.choice([0.5, 1.0, 2.0]), rng.choice([0.0, 8.0])))
            if spaced:
                assert words(chunks) == text.split()
            else:  # upstream's chunk_text joins a CJK sentence end to the next without a space
                assert "".join(words(chunks)) == "".join(text.split())
            assert all(c.strip() == c and c for c in chunks)


def test_a_reference_that_leaves_no_room_is_refused_before_any_work() -> None:
    with pytest.raises(ServiceError) as err:
        plan("Hello there.", max_frames=465)
    assert err.value.code == ErrorCode.TEXT_TOO_LONG


def test_words_in_scripts_with_spaces_stay_apart_where_the_stream_cuts_them() -> None:
    for text in (" ".join(["сегодня мы будем гулять в парк"] * 12), " ".join(["on va au marché acheter du pain"] * 12),
                 " ".join(["오늘 우리는 공원에 갑니다"] * 12)):
        stream = plan(text, stream=StreamShape(split_min_s=0.0))
        assert len(stream) >= 2 and words(stream) == text.split()
