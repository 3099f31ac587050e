"""Config validation and request parsing (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ishowtts_edge.config import ConfigError, load_settings
from ishowtts_edge.protocol import ErrorCode, Limits, ServiceError, encode_audio, encode_header, parse_request

LIMITS = Limits(max_message_bytes=4096, max_text_chars=50, max_reference_bytes=1000)


def test_repo_default_config_is_valid():
    from conftest import REPO

    s = load_settings(REPO / "etc" / "ishowtts-edge.toml")
    assert s.engine.nfe_step == 7
    assert s.endpoint.startswith("ipc://")


def test_env_overrides_file(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text("[engine]\nnfe_step = 9\n")
    assert load_settings(f).engine.nfe_step == 9
    monkeypatch.setenv("ISHOWTTS_EDGE_ENGINE__NFE_STEP", "12")
    assert load_settings(f).engine.nfe_step == 12


def test_missing_file_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    f = tmp_path / "c.toml"
    f.write_text('[voices.x]\nref_text = "no audio"\n[engine]\ndevice = "tpu"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    text = str(err.value)
    assert str(f) in text and "voices.x" in text and "engine.device" in text


def test_unreadable_file_is_a_config_error(tmp_path):
    """A SIGHUP after an editor left the file 0600 root must be refused, not end the daemon."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # /tmp: traversable by anyone, unlike tmp_path
        os.chmod(folder, 0o755)
        f = Path(folder) / "c.toml"
        f.write_text("[server]\nmax_queue = 2\n")
        f.chmod(0)
        as_root = os.geteuid() == 0
        if as_root:  # root reads any file: become the daemon's kind of user for the read
            os.seteuid(65534)
        try:
            with pytest.raises(ConfigError, match=r"cannot read it: Permission denied") as err:
                load_settings(f)
        finally:
            if as_root:
                os.seteuid(0)
        assert str(f) in str(err.value)


def test_old_names_of_the_hwctl_keys_still_work_and_are_reported(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text('[hardware]\nhelper_socket = "/run/old.sock"\nhelper_timeout_s = 30\n')
    s = load_settings(f)
    assert s.hardware.hwctl_socket == Path("/run/old.sock") and s.hardware.hwctl_timeout_s == 30
    assert s.deprecated_keys() == [
        ("hardware.helper_socket", "hardware.hwctl_socket"), ("hardware.helper_timeout_s", "hardware.hwctl_timeout_s")
    ]
    f.write_text('[hardware]\nhwctl_socket = "/run/new.sock"\n')
    assert load_settings(f).deprecated_keys() == []
    monkeypatch.setenv("ISHOWTTS_EDGE_HARDWARE__HELPER_TIMEOUT_S", "40")
    s = load_settings(f)
    assert s.hardware.hwctl_timeout_s == 40 and s.deprecated_keys() == [("hardware.helper_timeout_s", "hardware.hwctl_timeout_s")]


def test_an_old_and_a_new_name_for_one_key_is_refused(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[hardware]\nhelper_socket = "/run/old.sock"\nhwctl_socket = "/run/new.sock"\n')
    with pytest.raises(ConfigError, match="hardware.helper_socket is the old name of hardware.hwctl_socket: give only hwctl_socket"):
        load_settings(f)


def test_the_monitors_old_hot_key_moves_to_the_telemetry_section_with_a_warning(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text("[monitor]\nhot_c = 85.0\n")
    s = load_settings(f)
    assert s.telemetry.hot_tj_c == 85.0 and not hasattr(s.monitor, "hot_c")
    assert s.deprecated_keys() == [("monitor.hot_c", "telemetry.hot_tj_c")]
    f.write_text("[telemetry]\nhot_tj_c = 80.0\n")
    monkeypatch.setenv("ISHOWTTS_EDGE_MONITOR__HOT_C", "75")
    with pytest.raises(ConfigError, match="monitor.hot_c is the old name of telemetry.hot_tj_c: give only hot_tj_c"):
        load_settings(f)
    monkeypatch.delenv("ISHOWTTS_EDGE_MONITOR__HOT_C")
    assert load_settings(f).telemetry.hot_tj_c == 80.0 and load_settings(f).deprecated_keys() == []


def test_telemetry_rescan_interval_is_off_or_at_least_one_sample_interval(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("")
    assert load_settings(f).telemetry.rescan_interval_s == 300.0
    for value in ("0", "1.0", "86400"):
        f.write_text(f"[telemetry]\ninterval_s = 1.0\nrescan_interval_s = {value}\n")
        assert load_settings(f).telemetry.rescan_interval_s == float(value)
    for value, why in (("0.5", "must be 0 \\(never\\) or at least interval_s"), ("-1", "greater than or equal to 0"),
                       ("inf", "less than or equal to 86400"), ("nan", "telemetry.rescan_interval_s")):
        f.write_text(f"[telemetry]\ninterval_s = 1.0\nrescan_interval_s = {value}\n")
        with pytest.raises(ConfigError, match=why):
            load_settings(f)


@pytest.mark.parametrize(
    "toml, key, given",
    [
        ('[wyoming]\nport = "5555"\n', "wyoming.port", "string"),
        ("[server]\nmax_queue = 2.0\n", "server.max_queue", "float"),
        ('[engine]\ncompile = "yes"\n', "engine.compile", "string"),
        ("[server]\nallow_remote = 1\n", "server.allow_remote", "integer"),
        ("default_voice = 3\n", "default_voice", "integer"),
        ('[voices.a]\ndir = "/v/a"\nref_text = 5\n', "voices.a.ref_text", "integer"),
        ('[engine]\ncuda_graph_nfe = [8, "32"]\n', "engine.cuda_graph_nfe.1", "string"),
        ("[hardware]\npower_mode = 2.0\n", "hardware.power_mode", "float"),
        ('[hardware]\nhelper_timeout_s = "30"\n', "hardware.helper_timeout_s", "string"),  # under its old name too
    ],
)
def test_a_file_value_of_the_wrong_toml_type_is_refused_naming_the_key(tmp_path, toml, key, given):
    """Lax validation took "5555" as the port 5555, 2.0 as 2 and "yes" as true: a typo in a hand-written file."""
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert f"\n  {key}: Input should be a valid " in str(err.value)
    assert f"(the file gives a TOML {given})" in str(err.value)


def test_the_wrong_type_and_the_other_errors_of_a_file_are_reported_together(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[wyoming]\nport = "5555"\n[engine]\ndevice = "tpu"\n[monitor]\ncv_treshold = 0.1\n')
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    lines = str(err.value).splitlines()
    assert lines[0] == f"config file {f}: 3 invalid setting(s)"
    assert lines[1] == "  wyoming.port: Input should be a valid integer (the file gives a TOML string)"
    assert lines[2:] == ["  engine.device: Input should be 'auto', 'cuda' or 'cpu'", "  monitor.cv_treshold: unknown key"]


def test_file_values_of_their_keys_types_load_and_the_environments_strings_are_still_converted(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text('[metrics]\ninterval_s = 5\n[hardware]\npower_mode = 0\n[wyoming]\nport = 10300\n'
                 '[engine]\ncompile = true\ncuda_graph_nfe = [16]\n')
    s = load_settings(f)
    assert (s.metrics.interval_s, s.hardware.power_mode, s.wyoming.port, s.engine.compile) == (5.0, 0, 10300, True)
    monkeypatch.setenv("ISHOWTTS_EDGE_WYOMING__PORT", "5555")
    monkeypatch.setenv("ISHOWTTS_EDGE_ENGINE__COMPILE", "false")
    monkeypatch.setenv("ISHOWTTS_EDGE_METRICS__INTERVAL_S", "2")
    monkeypatch.setenv("ISHOWTTS_EDGE_ENGINE__CUDA_GRAPH_NFE", "[8, 32]")
    monkeypatch.setenv("ISHOWTTS_EDGE_DEFAULT_VOICE", "3")
    s = load_settings(f)
    assert (s.wyoming.port, s.engine.compile, s.metrics.interval_s) == (5555, False, 2.0)
    assert s.engine.cuda_graph_nfe == [8, 32] and s.default_voice == "3"


def test_a_daemon_whose_file_gives_a_wrong_type_exits_78_naming_the_key(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    config = tmp_path / "c.toml"
    # Its own directories and no hardware, should a regression let it start.
    config.write_text(f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
                      f'cache_dir = "{tmp_path}/cache"\n[hardware]\nenabled = false\n[server]\nmax_queue = "4"\n')
    r = subprocess.run([sys.executable, "-m", "ishowtts_edge.cli", "--config", str(config), "serve"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 78, r.stderr
    assert str(config) in r.stderr and "server.max_queue: Input should be a valid integer" in r.stderr


def test_voice_forms(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[voices.a]\ndir = "/v/a"\n[voices.b]\nref_audio = "/v/b.wav"\nref_text = "hi"\n')
    s = load_settings(f)
    assert set(s.voices) == {"a", "b"}


def frames(**header) -> list[bytes]:
    return [json.dumps(header).encode()]


def test_parse_valid_synthesize():
    r = parse_request(frames(op="synthesize", id=7, text="hello", speed=1, nfe_step=8), LIMITS)
    assert r.id == "7" and r.params.text == "hello" and r.params.speed == 1.0 and r.params.nfe_step == 8


@pytest.mark.parametrize(
    "msg,code",
    [
        ([b"\x00\x01"], ErrorCode.BAD_REQUEST),
        (frames(op="synthesize", text="x" * 51), ErrorCode.TEXT_TOO_LONG),
        (frames(op="synthesize", text="hi", seed=-1), ErrorCode.BAD_REQUEST),
        ([b'{"op":"synthesize","text":"hi","speed":Infinity}'], ErrorCode.BAD_REQUEST),
        ([b'{"op":"synthesize","text":"hi","speed":1' + b"0" * 400 + b"}"], ErrorCode.BAD_REQUEST),  # float() overflows
        ([b'{"v":true,"op":"ping"}'], ErrorCode.UNSUPPORTED_VERSION),
        (frames(op="synthesize", text="hi", id=True), ErrorCode.BAD_REQUEST),
        (frames(op="synthesize", text="hi", ref_text="r") + [b"x" * 1001], ErrorCode.TOO_LARGE),
        (frames(op="synthesize", text="hi", voice="v", ref_text="r") + [b"x"], ErrorCode.BAD_REQUEST),
        (frames(op="ping", pad="x" * 5000), ErrorCode.TOO_LARGE),
    ],
)
def test_parse_errors(msg, code):
    with pytest.raises(ServiceError) as err:
        parse_request(msg, LIMITS)
    assert err.value.code == code


@pytest.mark.parametrize(
    "raw",
    [
        b'{"op":"synthesize","text":"hi","seed":1' + b"0" * 5000 + b"}",  # int() refuses > 4300 digits
        b'{"op":"ping","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # RecursionError in the decoder
    ],
    ids=["huge-integer", "deep-nesting"],
)
def test_json_the_decoder_cannot_hold_is_a_bad_request(raw):
    with pytest.raises(ServiceError) as err:
        parse_request([raw], Limits(max_message_bytes=1 << 20, max_text_chars=50, max_reference_bytes=1000))
    assert err.value.code == ErrorCode.BAD_REQUEST and "not usable JSON" in err.value.message


def test_escaped_surrogate_pair_is_text_and_a_lone_surrogate_is_refused():
    ok = parse_request([b'{"op":"synthesize","id":"e","text":"hi \\ud83d\\ude00"}'], LIMITS)
    assert ok.params.text == "hi \U0001F600"
    for raw in (b'{"op":"ping","id":"\\ud800"}', b'{"op":"ping","\\udc00":1}', b'{"op":"synthesize","text":"\\ude00 hi"}'):
        with pytest.raises(ServiceError) as err:
            parse_request([raw], LIMITS)
        assert err.value.code == ErrorCode.BAD_REQUEST and "surrogate" in err.value.message


def test_reply_header_that_utf8_cannot_carry_is_escaped_not_raised():
    assert encode_header({"id": "\u00e9"}) == '{"id":"\u00e9"}'.encode("utf-8")
    raw = encode_header({"id": "\ud800", "ok": False})
    assert raw.isascii() and json.loads(raw) == {"id": "\ud800", "ok": False}


def test_encode_audio_formats():
    import io

    import numpy as np
    import soundfile as sf

    x = np.array([0.0, 0.5, -0.5, 2.0], dtype=np.float32)
    assert np.frombuffer(encode_audio(x, 24000, "pcm_s16le"), "<i2").tolist() == [0, 16384, -16384, 32767]
    assert np.frombuffer(encode_audio(x, 24000, "f32le"), "<f4").tolist() == [0.0, 0.5, -0.5, 1.0]
    wav, sr = sf.read(io.BytesIO(encode_audio(x, 24000, "wav")))
    assert sr == 24000 and len(wav) == 4
    with pytest.raises(ValueError, match="unknown audio format"):
        encode_audio(x, 24000, "mp3")


def test_wav_carries_the_pcm_s16le_samples():
    """WAV = a standard 16-bit mono header + exactly the pcm_s16le samples (within 2 LSB of libsndfile's)."""
    import io
    import wave

    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, 48000), [1.0, -1.0, 0.5 / 32767, 1.5 / 32767, -2.5 / 32767]]).astype(np.float32)
    ours = encode_audio(x, 22050, "wav")
    pcm = np.frombuffer(encode_audio(x, 22050, "pcm_s16le"), "<i2")
    assert pcm[-5:].tolist() == [32767, -32767, 0, 2, -2]  # round half to even
    got, sr = sf.read(io.BytesIO(ours), dtype="int16")
    assert sr == 22050 and sf.info(io.BytesIO(ours)).subtype == "PCM_16"
    np.testing.assert_array_equal(got, pcm)
    with wave.open(io.BytesIO(ours)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 22050, x.size)
    ref = io.BytesIO()
    sf.write(ref, x, 22050, format="WAV", subtype="PCM_16")
    before = sf.read(io.BytesIO(ref.getvalue()), dtype="int16")[0].astype(np.int32)
    assert np.abs(before - got).max() <= 2


def test_shipped_config_documents_the_real_defaults():
    """Every commented `# key = value` in etc/ishowtts-edge.toml names a real key and its real default."""
    import re
    import tomllib

    from conftest import REPO
    from ishowtts_edge.config import Settings

    defaults = Settings()
    section = None
    checked = 0
    for line in (REPO / "etc" / "ishowtts-edge.toml").read_text().splitlines():
        header = re.match(r"^(?:# )?\[(\w+)[\].]", line)
        if header:
            section = header.group(1)
            continue
        m = re.match(r"^# (\w+) = (.+?)(?:\s{2,}#.*)?$", line)
        if not m or section is None or section == "voices" or not hasattr(defaults, section):
            continue
        key, raw = m.groups()
        model = getattr(defaults, section)
        assert key in type(model).model_fields, f"[{section}] {key} is not a setting"
        value = tomllib.loads(f"v = {raw}")["v"]
        if key in ("checkpoint", "vocab", "vocoder_dir"):
            continue  # examples of real paths, not defaults
        actual = getattr(model, key)
        if key in ("endpoint", "events_endpoint"):
            assert value == "" and actual == ""
        elif isinstance(actual, Path):
            assert isinstance(value, str) and Path(value) == actual, (section, key, value)
        elif isinstance(actual, float) and not isinstance(value, bool):
            assert isinstance(value, (int, float)) and value == actual, (section, key, value)  # TOML may write 2 for 2.0
        else:  # bool, int, str, list: the documented value as TOML reads it, no conversion
            assert type(value) is type(actual) and value == actual, (section, key, value)
        checked += 1
    assert checked > 30


def test_a_header_nested_to_the_decoders_limit_is_a_bad_request_even_with_an_escape():
    """The lone-surrogate check re-encodes the header: a depth the decoder just managed is one it may not."""
    for depth in range(900, 1100):
        raw = b'{"op":"ping","x":' + b"[" * depth + b"]" * depth + b',"y":"\\u0041"}'
        try:
            parse_request([raw], LIMITS)
        except ServiceError as err:
            assert err.code == ErrorCode.BAD_REQUEST, (depth, err.code)


@pytest.mark.parametrize(
    "header",
    [
        {"op": "x" * 100_000},
        {"op": "ping", "v": "x" * 100_000},
        {"op": "ping", "v": [[[[[[[[[["deep"]]]]]]]]]]},
        {"op": "synthesize", "text": "hi", "y" * 100_000: 1},
        {"op": "synthesize", "text": "hi", **{f"k{i}": i for i in range(5000)}},
    ],
    ids=["long-op", "long-version", "nested-version", "long-field-name", "many-unknown-fields"],
)
def test_an_error_message_quotes_a_peers_values_shortened(header):
    """Messages are echoed in the reply and written to the journal: a peer's 100 KB op must not be, whole."""
    with pytest.raises(ServiceError) as err:
        parse_request([json.dumps(header).encode()], Limits(1 << 20, 2000, 1000))
    assert err.value.code in (ErrorCode.UNKNOWN_OP, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.BAD_REQUEST)
    assert len(err.value.message) < 400, err.value.message[:500]
