"""Voice registry: configured voices re-read when their files change, ad-hoc LRU, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ishowtts_edge.config import VoiceConfig
from ishowtts_edge.engine.core import Engine
from ishowtts_edge.engine.loader import load_engine
from ishowtts_edge.protocol import ErrorCode, ServiceError, SynthesizeParams
from tests.engine_support import engine_settings, tone, write_reference, tiny_bundle  # noqa: F401 (fixture)


def _wav_bytes(tmp_path: Path, name: str, seconds: float = 1.5, seed: int = 0) -> bytes:
    return write_reference(tmp_path / name, seconds=seconds, seed=seed).read_bytes()


@pytest.fixture
def voice_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "alice"
    folder.mkdir()
    write_reference(folder / "ref.wav", seconds=2.0)
    (folder / "ref.txt").write_text("Alice speaks here.\n", encoding="utf-8")
    return folder


@pytest.fixture
def engine(tiny_bundle, tmp_path: Path, voice_dir: Path) -> Engine:
    (tmp_path / "broken.wav").write_bytes(b"this is not audio at all" * 10)
    voices = {
        "alice": VoiceConfig(dir=voice_dir),
        "bob": VoiceConfig(ref_audio=write_reference(tmp_path / "bob.wav", seconds=1.8, seed=3), ref_text="Bob here"),
        "broken": VoiceConfig(ref_audio=tmp_path / "broken.wav", ref_text="Nothing"),
    }
    eng = load_engine(engine_settings(tiny_bundle, tmp_path, voices, adhoc_voice_cache=2))
    return eng


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_broken_voice_is_listed_unavailable_and_others_work(engine: Engine) -> None:
    listing = {v["id"]: v for v in engine.voices()}
    assert listing["alice"]["available"] and listing["bob"]["available"]
    assert listing["alice"]["ref_text"] == "Alice speaks here."
    assert listing["broken"]["available"] is False
    assert "cannot be decoded" in listing["broken"]["error"]
    assert "demo" not in listing  # a real checkpoint brings no demo voice
    with pytest.raises(ServiceError) as info:
        engine.synthesize(SynthesizeParams(text="Hello there friend.", voice="broken"))
    assert info.value.code is ErrorCode.BAD_REFERENCE
    assert engine.synthesize(SynthesizeParams(text="Hello there friend.", voice="bob", seed=1)).audio.size > 0


def test_unknown_voice(engine: Engine) -> None:
    with pytest.raises(ServiceError) as info:
        engine.synthesize(SynthesizeParams(text="Hello there.", voice="carol"))
    assert info.value.code is ErrorCode.UNKNOWN_VOICE
    assert "carol" in info.value.message and "alice" in info.value.message


def test_an_unknown_voice_named_at_length_is_quoted_short(engine: Engine) -> None:
    """The message is echoed and logged: a peer's 100 KB voice name is not, whole."""
    with pytest.raises(ServiceError) as info:
        engine.synthesize(SynthesizeParams(text="Hello there.", voice="v" * 100_000))
    assert info.value.code is ErrorCode.UNKNOWN_VOICE
    assert len(info.value.message) < 200 and "alice" in info.value.message


def test_cache_hit_touch_and_change(engine: Engine, voice_dir: Path) -> None:
    registry = engine.registry
    first = registry.get("alice")
    assert registry.get("alice") is first
    assert registry.entry_stats("alice") == {"prepared": 1, "rehashed": 1}

    _bump_mtime(voice_dir / "ref.txt")  # touched, same content: re-hashed, not re-prepared
    assert registry.get("alice") is first
    assert registry.entry_stats("alice") == {"prepared": 1, "rehashed": 2}

    (voice_dir / "ref.txt").write_text("Alice says something else now.", encoding="utf-8")
    _bump_mtime(voice_dir / "ref.txt")
    changed = registry.get("alice")
    assert changed is not first and changed.ref_text == "Alice says something else now."
    assert registry.entry_stats("alice")["prepared"] == 2

    write_reference(voice_dir / "ref.wav", seconds=3.0, seed=9)
    _bump_mtime(voice_dir / "ref.wav")
    longer = registry.get("alice")
    assert longer.ref_seconds > changed.ref_seconds
    assert registry.entry_stats("alice")["prepared"] == 3


def test_voice_whose_file_disappears_fails_then_recovers(engine: Engine, voice_dir: Path, tmp_path: Path) -> None:
    saved = (voice_dir / "ref.wav").read_bytes()
    (voice_dir / "ref.wav").unlink()
    with pytest.raises(ServiceError) as info:
        engine.registry.get("alice")
    assert info.value.code is ErrorCode.BAD_REFERENCE and "ref.wav" in info.value.message
    assert {v["id"]: v for v in engine.voices()}["alice"]["available"] is False
    (voice_dir / "ref.wav").write_bytes(saved)
    assert engine.registry.get("alice").ref_text == "Alice speaks here."


def test_adhoc_lru(engine: Engine, tmp_path: Path) -> None:
    registry = engine.registry
    a, b, c = (_wav_bytes(tmp_path, f"{n}.wav", seed=i) for i, n in enumerate("abc"))
    prepared_a = registry.adhoc(a, "Voice A.")
    registry.adhoc(b, "Voice B.")
    assert registry.adhoc(a, "Voice A.") is prepared_a  # hit, and A becomes most recent
    registry.adhoc(c, "Voice C.")  # evicts B, the least recently used
    assert registry.adhoc_stats == {"hits": 1, "misses": 3, "evictions": 1}
    assert registry.adhoc(a, "Voice A.") is prepared_a
    registry.adhoc(b, "Voice B.")
    assert registry.adhoc_stats["misses"] == 4 and registry.adhoc_cached() == 2
    # the same audio with another transcript is another voice
    assert registry.adhoc(a, "Another transcript.") is not prepared_a


def test_adhoc_request_synthesizes(engine: Engine, tmp_path: Path) -> None:
    ref = _wav_bytes(tmp_path, "x.wav", seconds=2.0, seed=4)
    params = SynthesizeParams(text="Speak like this.", ref_text="A reference transcript.", seed=2)
    first = engine.synthesize(params, ref)
    second = engine.synthesize(params, ref)
    np.testing.assert_array_equal(first.audio, second.audio)
    assert engine.registry.adhoc_stats["hits"] == 1


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("garbage", "cannot be decoded"), ("empty", "empty"), ("short", "at least"), ("silent", "at least")],
)
def test_bad_adhoc_reference(engine: Engine, tmp_path: Path, kind: str, fragment: str) -> None:
    path = tmp_path / "bad.wav"
    if kind == "garbage":
        payload = b"RIFF....WAVEfmt garbage"
    elif kind == "empty":
        payload = b""
    else:
        samples = tone(0.15) if kind == "short" else np.zeros(48000, dtype=np.float32)
        sf.write(path, samples, 24000, subtype="PCM_16")
        payload = path.read_bytes()
    with pytest.raises(ServiceError) as info:
        engine.synthesize(SynthesizeParams(text="Hello.", ref_text="Hi."), payload)
    assert info.value.code is ErrorCode.BAD_REFERENCE
    assert fragment in info.value.message


def test_reload_voices_keeps_unchanged_preparations(engine: Engine, tmp_path: Path, voice_dir: Path) -> None:
    alice = engine.registry.get("alice")
    settings = engine.settings.model_copy(deep=True)
    settings.voices = {
        "alice": VoiceConfig(dir=voice_dir),
        "dave": VoiceConfig(ref_audio=write_reference(tmp_path / "dave.wav", seconds=1.6, seed=5), ref_text="Dave"),
    }
    engine.reload_voices(settings)
    assert [v["id"] for v in engine.voices()] == ["alice", "dave"]
    assert engine.registry.get("alice") is alice
    with pytest.raises(ServiceError) as info:
        engine.registry.get("bob")
    assert info.value.code is ErrorCode.UNKNOWN_VOICE


def test_reference_at_a_low_sample_rate_is_resampled(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "odd.wav"
    sf.write(path, tone(2.0, rate=8000), 8000, subtype="PCM_16")
    result = engine.synthesize(SynthesizeParams(text="Low rate reference.", ref_text="A tone.", seed=1), path.read_bytes())
    assert result.audio.size > 0 and result.sample_rate == 24000


def test_reference_at_an_odd_sample_rate_is_refused_not_resampled(engine: Engine, tmp_path: Path) -> None:
    """7919 Hz would need a 24000 x 7919 polyphase kernel: 0.7 GB and 18 s of the worker."""
    path = tmp_path / "prime.wav"
    sf.write(path, tone(2.0, rate=7919), 7919, subtype="PCM_16")
    with pytest.raises(ServiceError) as info:
        engine.synthesize(SynthesizeParams(text="Odd rate.", ref_text="A tone.", seed=1), path.read_bytes())
    assert info.value.code is ErrorCode.BAD_REFERENCE
    assert "sample rate 7919 Hz" in info.value.message and "44100" in info.value.message
    assert 7919 not in engine.prompts.resample.rates()


def test_usual_rates_resample_and_the_resampler_cache_stays_bounded(engine: Engine) -> None:
    import torch

    from ishowtts_edge.engine.prompt import MAX_CACHED_RESAMPLERS

    rates = [8000, 11025, 12000, 16000, 22050, 32000, 37800, 44100, 48000, 88200, 96000, 176400, 192000, 384000]
    for rate in rates:
        out = engine.prompts.resample(torch.zeros(1, rate), rate)  # one second
        assert abs(out.shape[-1] - 24000) <= 1, rate
    assert engine.prompts.resample.rates() == rates[-MAX_CACHED_RESAMPLERS:]
    engine.prompts.resample(torch.zeros(1, 8000), rates[-MAX_CACHED_RESAMPLERS])  # a hit moves to the end
    assert engine.prompts.resample.rates()[-1] == rates[-MAX_CACHED_RESAMPLERS]


def test_huge_voice_file_is_refused_by_its_size_before_it_is_read(engine: Engine, tmp_path: Path) -> None:
    """A 2-hour WAV would be read whole (1.4 GB) for its hash before the decoder's length check."""
    import tracemalloc

    from ishowtts_edge.engine.voices import MAX_VOICE_FILE_BYTES

    huge = tmp_path / "huge.wav"
    with open(huge, "wb") as f:
        f.truncate(MAX_VOICE_FILE_BYTES + 1)  # sparse: costs no disk
    settings = engine.settings.model_copy(deep=True)
    settings.voices = {**settings.voices, "huge": VoiceConfig(ref_audio=huge, ref_text="Long.")}
    engine.reload_voices(settings)
    tracemalloc.start()
    try:
        with pytest.raises(ServiceError) as info:
            engine.registry.get("huge")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code is ErrorCode.BAD_REFERENCE and "the limit is 64 MiB" in info.value.message
    assert peak < 8 << 20
    assert {v["id"]: v for v in engine.voices()}["huge"]["available"] is False
    assert engine.registry.get("alice").ref_text == "Alice speaks here."
