"""Reference preprocessing == upstream f5-tts's pydub pipeline, and bad input is refused clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ishowtts_edge.engine.reference import clip_reference, decode_audio, normalize_ref_text
from ishowtts_edge.protocol import ErrorCode, ServiceError
from tests.engine_support import upstream_utils_infer


def _voiced(seconds: float, rate: int, rng: np.random.Generator, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return level * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * rng.random(t.size))


def _write(path: Path, pieces: list[tuple[str, float]], rate: int, channels: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    parts = []
    for kind, seconds in pieces:
        n = int(seconds * rate)
        if kind == "voice":
            parts.append(_voiced(seconds, rate, rng))
        elif kind == "hush":  # -45 dBFS: silence for the -40 pass, sound for the -50 pass
            parts.append(0.0056 * np.sin(2 * np.pi * 300 * np.arange(n) / rate))
        else:
            parts.append(0.0003 * rng.standard_normal(n))
    mono = np.concatenate(parts)
    data = np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono
    sf.write(path, data, rate, subtype="PCM_16")
    return path


def _upstream(path: Path, tmp_path: Path) -> tuple[np.ndarray, int]:
    """Run upstream's pydub preprocessing and read its output file (16-bit WAV)."""
    utils_infer = upstream_utils_infer()
    utils_infer._ref_audio_cache.clear()
    out_path, text = utils_infer.preprocess_ref_audio_text(str(path), "some words", show_info=lambda *_: None)
    assert text == "some words. "
    data, rate = sf.read(out_path, dtype="float32", always_2d=True)
    Path(out_path).unlink()
    return data.T, rate


CASES = {
    "short_with_edges": ([("quiet", 0.4), ("voice", 2.0), ("quiet", 0.3), ("voice", 1.0), ("quiet", 0.6)], 24000, 1),
    "long_silence_inside": ([("voice", 2.0), ("quiet", 3.5), ("voice", 2.0)], 24000, 1),
    "over_12s_long_pauses": (
        [("voice", 4.0), ("quiet", 1.5), ("voice", 4.0), ("quiet", 1.5), ("voice", 4.0), ("quiet", 1.2), ("voice", 2.0)],
        24000,
        1,
    ),
    "over_12s_short_pauses_only": (
        [("voice", 3.0), ("hush", 0.4), ("voice", 3.0), ("hush", 0.4), ("voice", 3.0), ("hush", 0.4), ("voice", 4.0)],
        22050,
        1,
    ),
    "over_12s_no_pause": ([("voice", 14.0)], 16000, 1),
    "stereo_44k": ([("quiet", 0.2), ("voice", 2.5), ("quiet", 0.2)], 44100, 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_clip_reference_matches_upstream_pydub(case: str, tmp_path: Path) -> None:
    pieces, rate, channels = CASES[case]
    path = _write(tmp_path / "ref.wav", pieces, rate, channels)
    expected, expected_rate = _upstream(path, tmp_path)
    ours = clip_reference(decode_audio(path.read_bytes()))
    assert ours.sample_rate == expected_rate
    assert ours.samples.shape == expected.shape, (ours.samples.shape, expected.shape)
    np.testing.assert_array_equal(ours.samples, expected)
    assert ours.seconds <= 12.1


def test_long_reference_is_clipped_at_a_pause(tmp_path: Path) -> None:
    pieces, rate, channels = CASES["over_12s_long_pauses"]
    ours = clip_reference(decode_audio(_write(tmp_path / "r.wav", pieces, rate, channels)))
    assert 9.0 < ours.seconds <= 12.1


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [(b"", "empty"), (b"RIFF\x00\x00\x00\x00WAVEjunk", "cannot be decoded"), (b"\x00" * 300, "cannot be decoded")],
)
def test_undecodable_reference_is_bad_reference(payload: bytes, fragment: str) -> None:
    with pytest.raises(ServiceError) as info:
        decode_audio(payload)
    assert info.value.code is ErrorCode.BAD_REFERENCE
    assert fragment in info.value.message


def _flac_of_silence(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, np.zeros((int(seconds * rate), channels), np.float32), rate, format="FLAC")
    return buf.getvalue()


def test_an_hour_of_compressed_silence_is_refused_from_its_header(tmp_path: Path) -> None:
    """~180 KB of FLAC is an hour of audio: 230 MB decoded at 16 kHz, GBs at 48 kHz stereo."""
    import tracemalloc

    payload = _flac_of_silence(3600)
    path = tmp_path / "hour.flac"
    path.write_bytes(payload)
    assert len(payload) < 1 << 20
    for source in (payload, path):  # an uploaded reference and a configured voice's file
        tracemalloc.start()
        try:
            with pytest.raises(ServiceError) as err:
                decode_audio(source)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert err.value.code is ErrorCode.BAD_REFERENCE
        assert "is 3600 s long; the limit is 120 s" in err.value.message
        assert peak < 8 << 20  # decoding it would allocate 230 MB


def test_reference_with_too_many_samples_is_refused_and_a_long_usual_one_is_not() -> None:
    with pytest.raises(ServiceError) as err:
        decode_audio(_flac_of_silence(60, rate=96000, channels=8))  # 1 min, but 46 M samples
    assert err.value.code is ErrorCode.BAD_REFERENCE and "8 channels" in err.value.message
    decoded = decode_audio(_flac_of_silence(110, rate=48000, channels=2))  # below both limits
    assert decoded.samples.shape == (2, 110 * 48000)


def test_decode_reads_flac_bytes(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.flac", np.full(2400, 0.25, dtype=np.float32), 24000, subtype="PCM_16")
    audio = decode_audio((tmp_path / "a.flac").read_bytes())
    assert audio.sample_rate == 24000 and audio.samples.shape == (1, 2400)
    assert np.allclose(audio.samples, 0.25, atol=1e-4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Hello", "Hello. "), ("Hello.", "Hello. "), ("Hello. ", "Hello. "), ("你好。", "你好。"), ("Hi!", "Hi!. ")],
)
def test_ref_text_gets_upstreams_sentence_stop(text: str, expected: str) -> None:
    assert normalize_ref_text(text) == expected
