"""Engine lifecycle: demo checkpoint, load errors, warm-up, buckets, compile tracing, OOM, clock emulation."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ishowtts_edge.config import PathsConfig, Settings, VoiceConfig
from ishowtts_edge.engine import EngineLoadError
from ishowtts_edge.engine.checkpoint import ModelArch, read_arch
from ishowtts_edge.engine.clock import ClockEmulator
from ishowtts_edge.engine.loader import load_engine
from ishowtts_edge.engine.demo import DEMO_ARCH, demo_bundle_valid, write_demo_bundle
from ishowtts_edge.engine.sampler import FlowSampler, compile_counters
from ishowtts_edge.protocol import ErrorCode, ServiceError, SynthesizeParams
from tests.engine_support import engine_settings, out_of_memory_on_call, tiny_bundle  # noqa: F401 (fixture)

TEXT = "Hello world, this is a test of the engine."


# --- demo checkpoint -------------------------------------------------------------------------


def _demo_settings(tmp_path: Path) -> Settings:
    return Settings(
        paths=PathsConfig(runtime_dir=tmp_path / "run", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache"),
        engine={"device": "cpu"},
    )


def test_demo_engine_generates_once_and_reuses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ishowtts_edge")
    engine = load_engine(_demo_settings(tmp_path))
    demo_dir = tmp_path / "cache" / "demo"
    for name in ("model.yaml", "model_demo.safetensors", "vocab.txt", "vocos/config.yaml", "vocos/pytorch_model.bin",
                 "voice/ref.wav", "voice/ref.txt"):
        assert (demo_dir / name).is_file(), name
    assert all(k.startswith("ema_model.") for k in load_file(demo_dir / "model_demo.safetensors"))
    assert any(r.levelno == logging.WARNING and "UNTRAINED" in r.getMessage() for r in caplog.records)
    assert [v["id"] for v in engine.voices()] == ["demo"]
    described = engine.describe()
    assert described["demo"] is True and described["model"] == DEMO_ARCH.name

    result = engine.synthesize(SynthesizeParams(text=TEXT, seed=3))  # default voice "demo"
    assert result.audio.dtype == np.float32 and result.audio.size > 0
    assert np.abs(result.audio).max() <= 1.0 and result.sample_rate == 24000

    stamp = (demo_dir / "model_demo.safetensors").stat().st_mtime_ns
    again = load_engine(_demo_settings(tmp_path))
    assert (demo_dir / "model_demo.safetensors").stat().st_mtime_ns == stamp  # reused, not regenerated
    np.testing.assert_array_equal(again.synthesize(SynthesizeParams(text=TEXT, seed=3)).audio, result.audio)


def test_damaged_demo_cache_is_regenerated_identically(tmp_path: Path) -> None:
    load_engine(_demo_settings(tmp_path))
    demo_dir = tmp_path / "cache" / "demo"
    original = (demo_dir / "model_demo.safetensors").read_bytes()
    (demo_dir / "model_demo.safetensors").write_bytes(original[: len(original) // 2])
    load_engine(_demo_settings(tmp_path))
    assert (demo_dir / "model_demo.safetensors").read_bytes() == original  # seeded: same bytes


def test_demo_bundle_is_reproducible_and_validated(tmp_path: Path) -> None:
    a = write_demo_bundle(tmp_path / "a", seed=1)
    b = write_demo_bundle(tmp_path / "b", seed=1)
    c = write_demo_bundle(tmp_path / "c", seed=2)
    assert a.checkpoint.read_bytes() == b.checkpoint.read_bytes()
    assert a.checkpoint.read_bytes() != c.checkpoint.read_bytes()
    assert demo_bundle_valid(a, seed=1) and not demo_bundle_valid(a, seed=2)
    (a.voice_dir / "ref.txt").write_text("edited", encoding="utf-8")
    assert not demo_bundle_valid(a, seed=1)
    assert read_arch(a.arch_path).arch == DEMO_ARCH.arch


# --- load errors -------------------------------------------------------------------------------


def _copy_bundle(tiny_bundle, tmp_path: Path):
    dest = tmp_path / "copy"
    shutil.copytree(tiny_bundle.root, dest)
    return type(tiny_bundle)(dest)


def _load_error(settings: Settings) -> str:
    with pytest.raises(EngineLoadError) as info:
        load_engine(settings)
    return str(info.value)


def test_missing_checkpoint(tiny_bundle, tmp_path: Path) -> None:
    settings = engine_settings(tiny_bundle, tmp_path)
    settings.engine.checkpoint = tmp_path / "nope.safetensors"
    message = _load_error(settings)
    assert "nope.safetensors" in message and "not found" in message


def test_corrupt_checkpoint(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    data = bundle.checkpoint.read_bytes()
    bundle.checkpoint.write_bytes(data[: len(data) // 3])
    message = _load_error(engine_settings(bundle, tmp_path))
    assert str(bundle.checkpoint) in message and "corrupt" in message


def test_checkpoint_with_missing_key(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    state = load_file(bundle.checkpoint)
    state.pop("ema_model.transformer.proj_out.weight")
    save_file(state, str(bundle.checkpoint))
    message = _load_error(engine_settings(bundle, tmp_path))
    assert str(bundle.checkpoint) in message and "do not fit" in message and "proj_out.weight" in message


def test_checkpoint_for_another_architecture(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    bigger = ModelArch(DEMO_ARCH.name, "DiT", {**DEMO_ARCH.arch, "dim": 96}, DEMO_ARCH.mel_spec)
    bundle.arch_path.write_text(bigger.to_yaml(), encoding="utf-8")
    assert "size mismatch" in _load_error(engine_settings(bundle, tmp_path))


def test_pt_checkpoint_in_released_layout_loads(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    state = load_file(bundle.checkpoint)
    pt = bundle.root / "model_demo.pt"
    torch.save({"ema_model_state_dict": {**state, "initted": torch.tensor(True), "step": torch.tensor(5)}}, pt)
    settings = engine_settings(bundle, tmp_path, {"v": VoiceConfig(dir=bundle.voice_dir)})
    settings.engine.checkpoint = pt
    engine = load_engine(settings)
    reference = load_engine(engine_settings(tiny_bundle, tmp_path, {"v": VoiceConfig(dir=bundle.voice_dir)}))
    params = SynthesizeParams(text=TEXT, seed=4)
    np.testing.assert_array_equal(engine.synthesize(params).audio, reference.synthesize(params).audio)


def test_missing_vocoder_file_and_unknown_arch(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    (bundle.vocoder_dir / "pytorch_model.bin").unlink()
    message = _load_error(engine_settings(bundle, tmp_path))
    assert "pytorch_model.bin" in message and "not found" in message

    settings = engine_settings(tiny_bundle, tmp_path)
    settings.engine.model = "F5TTS_v9_Huge"
    assert "no such f5-tts architecture" in _load_error(settings)


def test_vocoder_config_may_only_name_vocos_classes(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    config = bundle.vocoder_dir / "config.yaml"
    config.write_text(config.read_text().replace("vocos.models.VocosBackbone", "os.system"), encoding="utf-8")
    assert "outside the vocos package" in _load_error(engine_settings(bundle, tmp_path))


# --- warm-up, buckets, compile -------------------------------------------------------------------


@pytest.fixture
def voices(tiny_bundle) -> dict[str, VoiceConfig]:
    return {"v": VoiceConfig(dir=tiny_bundle.voice_dir)}


def test_cpu_warmup_is_one_short_synthesis(tiny_bundle, tmp_path: Path, voices) -> None:
    engine = load_engine(engine_settings(tiny_bundle, tmp_path, voices))
    report = engine.warmup()
    assert report.compiled is False and report.error is None and len(report.shapes) == 1
    described = engine.describe()
    assert described["device"] == "cpu" and described["dtype"] == "float32"
    assert described["compiled"] is False and described["buckets"] == []
    assert described["warmup_seconds"] is not None and described["voices"] == 1
    for key in ("model", "arch", "checkpoint", "demo", "compile_mode", "recompiles_since_ready"):
        assert key in described


def test_padding_to_a_bucket_changes_nothing_but_float_noise(tiny_bundle, tmp_path: Path, voices) -> None:
    plain = load_engine(engine_settings(tiny_bundle, tmp_path, voices, pad_to_buckets="never"))
    padded = load_engine(engine_settings(tiny_bundle, tmp_path, voices, pad_to_buckets="always", length_buckets=[256, 1024]))
    assert padded.describe()["buckets"] == [256, 1024]
    for text in (TEXT, "Short one.", "A longer sentence. " * 8):
        params = SynthesizeParams(text=text, seed=11)
        a, b = plain.synthesize(params), padded.synthesize(params)
        assert a.mel_frames == b.mel_frames
        np.testing.assert_allclose(b.audio, a.audio, rtol=0, atol=1e-4 * np.abs(a.audio).max())
        # What the transformer ran on (the RTF monitor's size): reference + generated, padded.
        ref_frames = plain.registry.get(plain.settings.default_voice).payload.ref_audio_len
        assert a.model_frames == a.mel_frames + a.chunks * ref_frames
        assert b.model_frames >= a.model_frames
        if b.chunks == 1:
            assert b.model_frames in (256, 1024)


def test_models_without_text_mask_padding_are_never_padded(tiny_bundle) -> None:
    from ishowtts_edge.engine.checkpoint import build_cfm, read_vocab

    arch = ModelArch("v0_like", "DiT", {**DEMO_ARCH.arch, "text_mask_padding": False}, DEMO_ARCH.mel_spec)
    model = build_cfm(arch, *read_vocab(tiny_bundle.vocab))
    sampler = FlowSampler(model, buckets=[256, 512])
    assert sampler.exact_padding is False and sampler.buckets == []
    assert sampler.bucket_for(100) is None


@pytest.mark.parametrize(
    "scope,dynamic,graphs_per_warmup", [("blocks", True, 3), ("blocks", False, 6), ("model", True, 1)]
)
def test_compiled_buckets_do_not_recompile_after_ready(
    tiny_bundle, tmp_path: Path, voices, scope, dynamic, graphs_per_warmup
) -> None:
    # the "eager" backend traces with dynamo exactly as inductor would, without generating code.
    # scope "blocks": embedding, head and one graph that every block shares (not one per block).
    engine = load_engine(engine_settings(
        tiny_bundle, tmp_path, voices, compile_backend="eager", length_buckets=[256, 512], compile_dynamic=dynamic,
        compile_scope=scope,
    ))
    torch._dynamo.reset()
    before = compile_counters()["graphs"]
    report = engine.warmup()
    assert report.compiled is True and report.shapes == [256, 512] and report.error is None
    # dynamo really traced: once with a symbolic length, or once per bucket when specialised
    assert compile_counters()["graphs"] - before == graphs_per_warmup
    assert engine.describe()["recompiles_since_ready"] == 0
    reference = load_engine(engine_settings(tiny_bundle, tmp_path, voices, pad_to_buckets="never"))
    for text, seed, extra in ((TEXT, 1, {}), ("Short.", 2, {"cfg_strength": 0.5}), ("Some more words here.", 3, {"nfe_step": 9})):
        params = SynthesizeParams(text=text, seed=seed, **extra)
        got, want = engine.synthesize(params), reference.synthesize(params)
        np.testing.assert_allclose(got.audio, want.audio, rtol=0, atol=1e-4 * np.abs(want.audio).max())
    assert engine.describe()["recompiles_since_ready"] == 0
    # longer than the largest bucket: runs eager, still no new graph
    engine.synthesize(SynthesizeParams(text="This sentence is long. " * 12, seed=4))
    assert engine.describe()["recompiles_since_ready"] == 0


def test_compile_failure_falls_back_to_eager(tiny_bundle, tmp_path: Path, voices, monkeypatch) -> None:
    engine = load_engine(engine_settings(tiny_bundle, tmp_path, voices, compile_backend="eager", length_buckets=[256]))

    def broken(*args, **kwargs):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(engine.sampler, "_step", broken)
    report = engine.warmup()
    assert report.compiled is False and "inductor exploded" in report.error
    assert engine.describe()["compiled"] is False
    assert engine.synthesize(SynthesizeParams(text=TEXT, seed=1)).audio.size > 0


def test_out_of_memory_is_reported_and_engine_stays_usable(tiny_bundle, tmp_path: Path, voices, monkeypatch) -> None:
    engine = load_engine(engine_settings(tiny_bundle, tmp_path, voices))
    monkeypatch.setattr(engine.sampler, "sample", out_of_memory_on_call(engine.sampler.sample, 1))
    with pytest.raises(ServiceError) as info:
        engine.synthesize(SynthesizeParams(text=TEXT, seed=1))
    assert info.value.code is ErrorCode.OUT_OF_MEMORY
    assert engine.synthesize(SynthesizeParams(text=TEXT, seed=1)).audio.size > 0


def test_out_of_memory_degrades_the_daemon_until_a_synthesis_succeeds(tiny_bundle, tmp_path: Path, voices, monkeypatch) -> None:
    """One OOM is a passing cause: `status` and systemd's STATUS= say degraded, then ready again."""
    import json

    import zmq
    from conftest import NotifySocket
    from ishowtts_edge.daemon import Daemon
    from ishowtts_edge.events import EventPublisher
    from ishowtts_edge.protocol import Limits, parse_request

    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    settings = engine_settings(tiny_bundle, tmp_path, voices)
    daemon = Daemon(settings)
    engine = load_engine(settings)
    real_sample = engine.sampler.sample
    monkeypatch.setattr(engine.sampler, "sample", out_of_memory_on_call(real_sample, 1))
    daemon.engine = engine
    daemon.service.set("ready")
    daemon.publisher = EventPublisher(f"ipc://{tmp_path}/events.sock")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(daemon.publisher.endpoint)
    while not sub.poll(50):  # ZeroMQ's slow joiner: probe until the subscription is in place
        daemon.publisher.publish("state", {"probe": True})
    while sub.poll(100):
        sub.recv_multipart()

    def service_events() -> list[dict]:
        got = []
        while sub.poll(500):
            topic, body = sub.recv_multipart()
            if topic == b"service":
                got.append(json.loads(body)["data"])
        return got
    request = parse_request([b'{"op":"synthesize","id":"r1","text":"' + TEXT.encode() + b'","seed":1}'], Limits(1 << 20, 2000, 1 << 20))
    try:
        with pytest.raises(ServiceError) as info:
            daemon.synthesize(request)
        assert info.value.code is ErrorCode.OUT_OF_MEMORY
        assert daemon.health()["state"] == "degraded" and "out_of_memory" in daemon.health()["reasons"]
        notify.collect(lambda m: any(x.startswith("STATUS=degraded") and "out_of_memory" in x for x in m), timeout=5)
        [event] = service_events()
        assert event["state"] == "degraded" and "CUDA out of memory" in event["degraded"]["out_of_memory"]

        assert daemon.synthesize(request).audio.size > 0
        assert daemon.health() == {"state": "ready", "ready": True, "reasons": {}, "detail": ""}
        notify.collect(lambda m: m[-1].startswith("STATUS=ready"), timeout=5)
        assert service_events() == [{"state": "ready", "reason": "", "degraded": {}}]

        # A failed self-test is disproved the same way by a request that works.
        daemon.service.degrade("self_test", "a synthesize request to ourselves failed: timeout")
        assert daemon.health()["state"] == "degraded"
        daemon.synthesize(request)
        assert daemon.health()["state"] == "ready"

        # A cause that does not pass with a request (here: hardware) keeps the daemon degraded.
        monkeypatch.setattr(engine.sampler, "sample", out_of_memory_on_call(real_sample, 1))
        daemon.service.degrade("hardware", "jetson_clocks failed")
        with pytest.raises(ServiceError):
            daemon.synthesize(request)
        daemon.synthesize(request)
        assert daemon.health()["state"] == "degraded" and list(daemon.health()["reasons"]) == ["hardware"]
    finally:
        notify.close()
        sub.close(linger=0)
        daemon.publisher.close()


# --- clock emulation -----------------------------------------------------------------------------


def _devfreq(tmp_path: Path, cur: int, top: int) -> Path:
    folder = tmp_path / "devfreq" / "17000000.gpu"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cur_freq").write_text(f"{cur}\n")
    (folder / "max_freq").write_text(f"{top}\n")
    return folder


def test_clock_emulator_sleeps_in_proportion_to_the_lowered_clock(tmp_path: Path) -> None:
    slept: list[float] = []
    folder = _devfreq(tmp_path, 1_300_500_000, 1_300_500_000)
    clock = ClockEmulator(folder, sleep=slept.append)
    clock.after_step(0.2)
    assert slept == []  # at max clock: no delay
    (folder / "cur_freq").write_text("650250000\n")  # half clock: the step takes twice as long
    clock.after_step(0.2)
    (folder / "cur_freq").write_text("325125000\n")  # quarter clock: four times
    clock.after_step(0.1)
    assert slept == pytest.approx([0.2, 0.3])


def test_clock_emulator_without_devfreq_does_not_delay(tmp_path: Path, caplog) -> None:
    slept: list[float] = []
    clock = ClockEmulator(tmp_path / "missing", sleep=slept.append)
    clock.after_step(0.5)
    clock.after_step(0.5)
    assert slept == []
    assert sum("cannot read devfreq" in r.getMessage() for r in caplog.records) == 1


def test_engine_synthesis_slows_down_with_the_fake_clock(tiny_bundle, tmp_path: Path, voices) -> None:
    folder = _devfreq(tmp_path, 1_000_000_000, 1_000_000_000)
    engine = load_engine(engine_settings(tiny_bundle, tmp_path, voices, emulate_clock_devfreq=folder))
    assert engine.describe()["clock_emulation"] == str(folder)
    engine.synthesize(SynthesizeParams(text=TEXT, seed=1))
    assert engine.clock.total_delay_s == 0.0
    (folder / "cur_freq").write_text("250000000\n")  # a quarter of the clock: 3x the step time added
    result = engine.synthesize(SynthesizeParams(text=TEXT, seed=1))
    assert engine.clock.total_delay_s > 0
    assert result.synthesis_seconds > engine.clock.total_delay_s  # the sleeps are inside the request


def test_fetch_snippet_is_a_valid_engine_config(tmp_path: Path) -> None:
    from ishowtts_edge.config import load_settings
    from ishowtts_edge.engine.fetch import toml_snippet

    folder = tmp_path / 'odd "dir"'
    snippet = toml_snippet(folder / "model_1250000.safetensors", folder / "vocab.txt", folder / "vocos")
    (tmp_path / "c.toml").write_text(snippet, encoding="utf-8")
    settings = load_settings(tmp_path / "c.toml")
    assert settings.engine.checkpoint == folder / "model_1250000.safetensors"
    assert settings.engine.vocoder_dir == folder / "vocos" and settings.engine.model == "F5TTS_v1_Base"


def test_progress_keeps_coming_during_long_steps(tiny_bundle, tmp_path: Path, voices, monkeypatch) -> None:
    import ishowtts_edge.engine.heartbeat as heartbeat

    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.005)
    messages: list[str] = []
    settings = engine_settings(tiny_bundle, tmp_path, voices, pad_to_buckets="always", length_buckets=[256, 512])
    engine = load_engine(settings, messages.append)
    engine.warmup(messages.append)
    assert any(m.startswith("loading model") for m in messages)
    assert any(m.startswith("warming up 512 frames") for m in messages)
    assert any(m.endswith(" s)") for m in messages)  # repeated while a step was still running


def test_missing_vocab_names_the_file(tiny_bundle, tmp_path: Path) -> None:
    settings = engine_settings(tiny_bundle, tmp_path)
    settings.engine.vocab = tmp_path / "no_vocab.txt"
    message = _load_error(settings)
    assert "no_vocab.txt" in message and "not found" in message


# --- chunking text the model can take -----------------------------------------------------------


def test_chunker_splits_a_run_on_at_clause_marks_then_spaces_then_characters() -> None:
    from ishowtts_edge.engine.text import chunk_text, fit_chunks

    nbytes = lambda s: len(s.encode())  # noqa: E731
    english = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    pieces = fit_chunks(chunk_text(english, 100), 100)
    assert len(pieces) > 1 and all(nbytes(p) <= 100 for p in pieces)
    assert " ".join(pieces) == english  # split at spaces: no word cut
    chinese = "我们今天一起去公园散步然后回家吃饭" * 20
    pieces = fit_chunks(chunk_text(chinese, 100), 100)
    assert all(nbytes(p) <= 100 for p in pieces) and "".join(pieces) == chinese
    clauses = "甲乙丙丁、戊己庚辛、壬癸子丑、寅卯辰巳"
    assert fit_chunks([clauses], 30) == ["甲乙丙丁、戊己庚辛、", "壬癸子丑、寅卯辰巳"]
    normal = "Hello world, this is a test. And another sentence here!"
    assert fit_chunks(chunk_text(normal, 135), 135) == chunk_text(normal, 135)


def test_every_chunk_fits_the_models_positions_at_any_speed_or_is_refused_up_front(tmp_path: Path) -> None:
    engine = load_engine(_demo_settings(tmp_path))
    assert engine.max_frames() == 8192  # f5-tts DiT's precomputed text positions
    from ishowtts_edge.engine.text import duration_frames

    voice = engine.registry.get("demo")
    prompt = voice.payload
    run_on = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
    for speed in (0.3, 1.0, 3.0):
        chunks = engine._plan_chunks(run_on, prompt, voice.ref_seconds, speed)
        assert all(duration_frames(prompt.ref_audio_len, prompt.prompt_text, c, speed) <= 8192 for c in chunks)
    # A model with fewer positions than the reference itself needs: refused before any work.
    engine.max_frames = lambda: prompt.ref_audio_len  # type: ignore[method-assign]
    with pytest.raises(ServiceError) as err:
        engine.synthesize(SynthesizeParams(text="Hello there.", speed=0.3))
    assert err.value.code == ErrorCode.TEXT_TOO_LONG and "no room for text" in err.value.message
