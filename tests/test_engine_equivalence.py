"""The engine reproduces upstream f5-tts's infer_process on the same weights, reference, text and seed."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ishowtts_edge.config import VoiceConfig
from ishowtts_edge.engine import text as ours
from ishowtts_edge.engine.core import Engine
from ishowtts_edge.engine.loader import load_engine
from ishowtts_edge.protocol import SynthesizeParams
from tests.engine_support import engine_settings, upstream_utils_infer, write_reference, tiny_bundle  # noqa: F401 (fixture)

REF_TEXT = "Some call me nature, others call me mother nature"

LONG_TEXT = (
    "The appliance speaks whatever it is given. It splits long passages into sentences, "
    "and joins them with a short cross-fade. Nobody hears the seams. Each chunk is generated "
    "separately; then the pieces are blended together!"
)


class _SerialExecutor:
    """upstream runs chunks in threads that race for the global RNG; run them in order instead."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _soundfile_load(path, *args, **kwargs):
    """torchaudio.load needs FFmpeg/torchcodec (absent here); soundfile decodes WAV identically."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.T)), rate


@pytest.fixture(scope="module")
def upstream(tiny_bundle):
    utils_infer = upstream_utils_infer()
    from ishowtts_edge.engine.checkpoint import read_arch
    from ishowtts_edge.engine.upstream import ensure_f5_model_importable

    arch = read_arch(tiny_bundle.arch_path)
    dit = ensure_f5_model_importable().DiT
    with torch.random.fork_rng():
        model = utils_infer.load_model(
            dit, arch.arch, str(tiny_bundle.checkpoint), vocab_file=str(tiny_bundle.vocab), device="cpu"
        )
    vocoder = utils_infer.load_vocoder("vocos", is_local=True, local_path=str(tiny_bundle.vocoder_dir), device="cpu")
    return utils_infer, model, vocoder


def _upstream_wave(upstream, monkeypatch, ref_path: Path, ref_text: str, gen_text: str, seed: int, **kw) -> np.ndarray:
    utils_infer, model, vocoder = upstream
    monkeypatch.setattr(utils_infer.torchaudio, "load", _soundfile_load)
    monkeypatch.setattr(utils_infer, "ThreadPoolExecutor", _SerialExecutor)
    utils_infer._ref_audio_cache.clear()
    processed, ref_text = utils_infer.preprocess_ref_audio_text(str(ref_path), ref_text, show_info=lambda *_: None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wave, rate, _ = utils_infer.infer_process(
            processed, ref_text, gen_text, model, vocoder, show_info=lambda *_: None, progress=None,
            device="cpu", **kw,
        )
    assert rate == 24000
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def engine(tiny_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eq")
    voices = {
        "en": VoiceConfig(ref_audio=write_reference(tmp / "en.wav", seconds=2.5), ref_text=REF_TEXT),
        # a slow speaker (few words over a long reference): long texts split into many chunks
        "slow": VoiceConfig(ref_audio=write_reference(tmp / "slow.wav", seconds=3.0, seed=2), ref_text="Call me"),
        "zh": VoiceConfig(ref_audio=write_reference(tmp / "zh.wav", seconds=3.0, rate=22050, seed=1), ref_text="对，这就是我，万人敬仰的太乙真人。"),
    }
    eng = load_engine(engine_settings(tiny_bundle, tmp, voices))
    return eng


def _assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * scale)


CASES = {
    "one_chunk": ("en", "Hello world, this is a sentence for the engine.", {}),
    "short_text_speed_rule": ("en", "Hi there", {}),
    "long_cross_faded": ("slow", LONG_TEXT, {}),
    "chinese": ("zh", "我们今天去公园散步，然后回家吃饭。天气非常好！", {}),
    "params": ("en", "Other sampling settings, please.", {"nfe_step": 9, "cfg_strength": 1.5, "sway_sampling_coef": -0.5, "speed": 1.3}),
    "no_guidance": ("en", "No guidance at all here.", {"cfg_strength": 0.0}),
    # normalize off: digits and symbols reach the model as written, as upstream has them
    "not_normalised": ("en", "Chapter 4 costs $5 at 4:30.", {"normalize": False}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_engine_matches_upstream_infer_process(case, engine, upstream, monkeypatch) -> None:
    voice, text, kw = CASES[case]
    seed = 1234
    result = engine.synthesize(SynthesizeParams(text=text, voice=voice, seed=seed, **kw))
    config = engine.settings.voices[voice]
    defaults = engine.config  # upstream's infer_process defaults differ (nfe_step=32): pass ours explicitly
    upstream_kw = {
        "nfe_step": defaults.nfe_step,
        "cfg_strength": defaults.cfg_strength,
        "sway_sampling_coef": defaults.sway_sampling_coef,
        "speed": defaults.speed,
        "cross_fade_duration": defaults.cross_fade_s,
        "target_rms": defaults.target_rms,
        **kw,
    }
    upstream_kw.pop("normalize", None)
    expected = _upstream_wave(upstream, monkeypatch, config.ref_audio, config.ref_text, text, seed, **upstream_kw)
    _assert_same(result.audio, expected)
    assert result.seed == seed and result.sample_rate == 24000
    if case == "long_cross_faded":
        assert result.chunks >= 3


def test_same_seed_same_audio_other_seed_other_audio(engine) -> None:
    first = engine.synthesize(SynthesizeParams(text="Repeatable output.", voice="en", seed=5)).audio
    again = engine.synthesize(SynthesizeParams(text="Repeatable output.", voice="en", seed=5)).audio
    other = engine.synthesize(SynthesizeParams(text="Repeatable output.", voice="en", seed=6)).audio
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


CHUNK_TEXTS = [
    LONG_TEXT,
    "One. Two! Three? Four; five: six, seven.",
    "No punctuation at all just a long run of words that keeps going and going without any stop",
    "我们今天去公园散步，然后回家吃饭。天气非常好！你觉得呢？我觉得很好；真的。",
    "Mixed 中文 and English. 这是第二句。And a third one!",
    "Trailing spaces.   Multiple   spaces,  here.",
    "",
    "   ",
]


@pytest.mark.parametrize("max_chars", [1, 10, 40, 135, 400])
@pytest.mark.parametrize("text", CHUNK_TEXTS)
def test_chunker_matches_upstream(text: str, max_chars: int) -> None:
    assert ours.chunk_text(text, max_chars) == upstream_utils_infer().chunk_text(text, max_chars)


@pytest.mark.parametrize(
    "prompt",
    # 他在银 + 行工作: jieba reads 银行 as one word (hang2) only when converted whole
    ["Some call me nature.  ", "对，这就是我。", "Quote \"this\".  ", "Numbers 123.  ", "Hi!.  ", "他在银"],
)
@pytest.mark.parametrize(
    "gen", ["Hello world", "你好世界，今天很好", "\"Quoted\" start", "123 go", "...wait", "'tis fine", "Mixed 中文 text", "行工作"]
)
def test_engine_text_ids_equal_whole_string_conversion(prompt: str, gen: str) -> None:
    """The engine reuses a voice's cached prompt tokens; the ids must be upstream's all the same."""
    from types import SimpleNamespace

    from ishowtts_edge.engine.prompt import VoicePrompt
    from ishowtts_edge.engine.upstream import ensure_f5_model_importable

    ensure_f5_model_importable()  # as the engine does before its first conversion
    from f5_tts.model.utils import convert_char_to_pinyin

    whole = convert_char_to_pinyin([prompt + gen])[0]
    vocab = {token: i for i, token in enumerate(sorted(set(whole) | set(convert_char_to_pinyin([prompt])[0])), 1)}
    engine = SimpleNamespace(_vocab=vocab, device=torch.device("cpu"))
    voice = VoicePrompt(cond=torch.zeros(1), ref_audio_len=0, rms=torch.zeros(1), ref_text=prompt, prompt_text=prompt,
                        prompt_tokens=convert_char_to_pinyin([prompt])[0])
    ids = Engine._text_ids(engine, voice, gen)
    assert ids.tolist() == [[vocab.get(token, 0) for token in whole]]


def test_cross_fade_overlap_is_limited_by_the_shorter_wave() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(n).astype(np.float32) for n in (5000, 100, 7000))
    joined = ours.cross_fade([a, b, c], 0.15, 24000)
    # a+b overlap only 100 samples (b's length); (a+b)+c overlap the full 0.15 s = 3600 samples
    assert len(joined) == (5000 + 100 - 100) + 7000 - 3600
    fade = np.linspace(1, 0, 100)
    head = ours.cross_fade([a, b], 0.15, 24000)
    np.testing.assert_allclose(head[4900:], a[-100:] * fade + b * fade[::-1], rtol=1e-6)
    np.testing.assert_array_equal(ours.cross_fade([a, b, c], 0.0, 24000), np.concatenate([a, b, c]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("steps", "cfg"), [(7, 2.0), (9, 0.0)])
def test_sampler_matches_cfm_sample_in_each_dtype(tiny_bundle, dtype, steps, cfg) -> None:
    """The FP16 (CUDA) arithmetic, run on CPU: same dtype for noise, timesteps and Euler updates."""
    from ishowtts_edge.engine.checkpoint import load_model, read_arch
    from ishowtts_edge.engine.attention import BucketAttnProcessor
    from ishowtts_edge.engine.sampler import FlowSampler

    model = load_model(read_arch(tiny_bundle.arch_path), tiny_bundle.checkpoint, tiny_bundle.vocab,
                       torch.device("cpu"), dtype)
    generator = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 120, 100, generator=generator).to(dtype)
    text = torch.randint(0, 2000, (1, 50), generator=generator)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        expected, _ = model.sample(cond=cond, text=text, duration=230, steps=steps, cfg_strength=cfg,
                                   sway_sampling_coef=-1.0)
    ours = FlowSampler(model).sample(cond, text, 230, steps=steps, cfg_strength=cfg, sway_sampling_coef=-1.0,
                                     generator=torch.Generator().manual_seed(5))
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    bucketed = FlowSampler(model, buckets=[256])
    # padded frames are masked by our processor (one additive mask a step), not upstream's
    assert all(isinstance(b.attn.processor, BucketAttnProcessor) for b in model.transformer.transformer_blocks)
    padded = bucketed.sample(cond, text, 230, steps=steps, cfg_strength=cfg, sway_sampling_coef=-1.0,
                             generator=torch.Generator().manual_seed(5))
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2  # fp16 resolution at |x| ~ 4
    torch.testing.assert_close(padded.float(), expected.float(), rtol=0, atol=tolerance)


@pytest.mark.parametrize("tokens", [1, 50, 256, 300])  # 300: more tokens than frames, upstream cuts them
@pytest.mark.parametrize("drop_text", [False, True])
def test_graph_text_input_embeds_like_upstream(tiny_bundle, tokens: int, drop_text: bool) -> None:
    """What the CUDA graphs embed (ids padded to the bucket with -1) = upstream's text_embed of the raw ids."""
    from ishowtts_edge.engine.checkpoint import load_model, read_arch
    from ishowtts_edge.engine.sampler import FlowSampler, pad_text_ids

    model = load_model(read_arch(tiny_bundle.arch_path), tiny_bundle.checkpoint, tiny_bundle.vocab,
                       torch.device("cpu"), torch.float32)
    sampler = FlowSampler(model, buckets=[256])
    text = torch.randint(0, 2000, (1, tokens), generator=torch.Generator().manual_seed(tokens))
    ids = pad_text_ids(text, 256)
    assert ids.shape == (1, 256) and (ids[0, tokens:] == -1).all()
    with torch.inference_mode():
        want = model.transformer.text_embed(text, seq_len=256, drop_text=drop_text)
        got = sampler._graph_text_embed(ids, drop_text)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("off", [(), ("fused_qkv",), ("time_once",), ("fused_qkv", "time_once")])
def test_padded_path_matches_upstream_with_each_rewrite_on_or_off(tiny_bundle, monkeypatch, off) -> None:
    """Fused QKV and the per-request time modulations change the arithmetic's order only."""
    from ishowtts_edge.engine import sampler as sampler_module
    from ishowtts_edge.engine.checkpoint import load_model, read_arch

    for part in off:
        monkeypatch.setitem(sampler_module.FAST_PATH_PARTS, part, False)
    model = load_model(read_arch(tiny_bundle.arch_path), tiny_bundle.checkpoint, tiny_bundle.vocab,
                       torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 90, 100, generator=generator)
    text = torch.randint(0, 2000, (1, 40), generator=generator)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        expected, _ = model.sample(cond=cond, text=text, duration=200, steps=7, cfg_strength=2.0,
                                   sway_sampling_coef=-1.0)
    sampler = sampler_module.FlowSampler(model, buckets=[256])
    assert sampler.parts == set(sampler_module.FAST_PATH_PARTS) - set(off)
    assert hasattr(model.transformer.transformer_blocks[0].attn, "to_qkv") == ("fused_qkv" not in off)
    padded = sampler.sample(cond, text, 200, steps=7, cfg_strength=2.0, sway_sampling_coef=-1.0,
                            generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(padded, expected, rtol=0, atol=1e-4)
