"""`ishowtts-edge bench` on the CPU with the tiny demo model: it runs end to end and every section reports.

A smoke test of the benchmark, not a benchmark: it asserts the report's structure and that
every figure is a real, finite number, never what the numbers are.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ishowtts_edge.bench import cli as bench_cli
from ishowtts_edge.bench import measure, stats, texts
from ishowtts_edge.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
#: What `ishowtts-edge bench` runs, on this checkout's code whatever the working directory.
BENCH = [sys.executable, "-m", "ishowtts_edge.cli", "bench"]
BENCH_ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_texts_have_the_lengths_the_published_figures_use():
    assert texts.TEXTS["sentence"] == "The quick brown fox jumps over a lazy dog."
    assert {k: len(v) for k, v in texts.TEXTS.items() if k != "sentence"} == {
        "chat": 60, "paragraph": 200, "interjection": 10,
    }


def test_summary_statistics():
    summary = stats.summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert summary["median"] == 3.0
    assert summary["p90"] == pytest.approx(4.0 + 0.6 * 6.0)  # numpy's linear interpolation
    assert summary["cv"] == pytest.approx(3.5355339 / 4.0)  # sample stdev / mean
    assert stats.summarize([2.0])["cv"] == 0.0 and stats.summarize([2.0])["p90"] == 2.0


def test_sweep_texts_are_whole_words_of_exact_length():
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,!?")
    vocabulary = {w.strip(".,!?").lower() for w in texts.SWEEP_PASSAGE.split()} | set(texts.SWEEP_FILLERS[1:])
    assert texts.sweep_text(1) == "A"
    for chars in [*range(1, 301), *texts.SWEEP_LENGTHS, 999]:
        text = texts.sweep_text(chars)
        assert len(text) == chars, (chars, text)
        assert set(text) <= allowed and "  " not in text and text == text.strip(), text
        assert text == texts.sweep_text(chars)  # deterministic: every side gets the same texts
        if chars > 1:
            assert text[-1] in ".!?" and text[0].isupper(), text
            # whole words only: nothing is cut in the middle
            assert all(w.strip(".,!?").lower() in vocabulary for w in text.split()), text
    with pytest.raises(ValueError):
        texts.sweep_text(0)


def test_overhead_is_split_at_the_daemons_server_seconds():
    samples = [
        measure.Sample(0.5, 4.0, 0.504, server_seconds=0.501, queue_seconds=0.0001),
        measure.Sample(0.6, 4.0, 0.605, server_seconds=0.602, queue_seconds=0.0003),
    ]
    feed = iter(samples)
    row = measure.measure("t", lambda seed: next(feed), warmup=0, runs=2, breakdown=True)
    assert row["transport_seconds"]["mean"] == pytest.approx((0.003 + 0.003) / 2)
    assert row["daemon_seconds"]["mean"] == pytest.approx((0.001 + 0.002) / 2)
    assert row["queue_seconds"]["max"] == pytest.approx(0.0003)
    # the two parts add up to the whole overhead, request by request
    assert row["overhead_seconds"]["mean"] == pytest.approx(
        row["transport_seconds"]["mean"] + row["daemon_seconds"]["mean"])
    # a daemon that does not report server_seconds (even for one reply): no split rather than a wrong one
    older = [measure.Sample(0.5, 4.0, 0.504), measure.Sample(0.5, 4.0, 0.504, server_seconds=0.501)]
    split = measure.overhead_breakdown(older)
    assert split == {"transport_seconds": None, "daemon_seconds": None, "queue_seconds": None}
    assert "transport_seconds" not in measure.measure("t", lambda seed: older[0], warmup=0, runs=1)
    assert stats.series_medians([{"nfe": 7, "text": "chat", "transport_seconds": None}], "transport_seconds") is None


def test_sweep_and_idle_options():
    parser = build_parser()

    def parse(*args: str):
        return parser.parse_args(["bench", *args])

    assert parse().sweep_lengths == texts.SWEEP_LENGTHS
    assert parse().idle_seconds == 10.0
    assert parse("--sweep-lengths", "none").sweep_lengths == []
    assert parse("--sweep-lengths", "20,1,20").sweep_lengths == [1, 20]
    assert parse("--idle-seconds", "0").idle_seconds == 0.0
    for bad in (["--sweep-lengths", "0"], ["--sweep-lengths", "ten"], ["--idle-seconds", "-1"], ["--runs", "0"],
                ["--warmup", "-1"], ["--skip", "engine,gpu"]):
        with pytest.raises(SystemExit) as exc:
            parse(*bad)
        assert exc.value.code == 2


def test_the_work_dir_defaults_to_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert bench_cli.default_work_dir() == tmp_path / "ishowtts-edge" / "bench"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _assert_stats(stats: dict, n: int) -> None:
    assert stats["n"] == n
    for key in ("median", "p90", "cv", "mean", "min", "max"):
        assert _finite(stats[key]), (key, stats)
    assert stats["min"] <= stats["median"] <= stats["p90"] <= stats["max"]


def _assert_rows(rows: list, nfes: list[int], texts: list[str], runs: int) -> None:
    assert sorted((r["nfe"], r["text"]) for r in rows) == sorted((n, t) for n in nfes for t in texts)
    for row in rows:
        assert row["audio_seconds"] > 0
        for key in ("rtf", "rtf_wall", "synthesis_seconds", "wall_seconds", "overhead_seconds"):
            _assert_stats(row[key], runs)
        assert row["rtf"]["median"] > 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def report(run_dir) -> dict:
    tmp = run_dir
    out = tmp / "out.json"
    # --no-cached-path: the placeholder module is what the GPU machine (without cached_path) uses.
    cmd = [
        *BENCH, "--device", "cpu", "--model", "demo", "--runs", "2", "--texts", "short",
        "--nfe", "7", "--upstream-nfe", "7", "--warmup", "0", "--step-iterations", "5", "--no-cached-path",
        "--work-dir", str(tmp / "work"), "--json", str(out), "--sweep-lengths", "1,20", "--idle-seconds", "1",
    ]
    # A stray override in the caller's environment must not reach the measured engine.
    env = {**BENCH_ENV, "ISHOWTTS_EDGE_ENGINE__NFE_STEP": "3"}
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}"
    assert "RTF med" in proc.stdout  # the printed table
    (tmp / "stdout.txt").write_text(proc.stdout)
    return json.loads(out.read_text())


def _assert_sweep(sweep: dict) -> None:
    """The length sweep's rows: one per length asked for, each a real synthesis of a text that long."""
    assert [r["chars"] for r in sweep["lengths"]] == [1, 20]
    for row in sweep["lengths"]:
        assert len(row["text"]) == row["chars"]
        assert _finite(row["audio_seconds"]) and row["audio_seconds"] > 0
        assert isinstance(row["mel_frames"], int) and row["mel_frames"] > 0
        assert isinstance(row["chunks"], int) and row["chunks"] >= 1
        assert row["nfe"] == 7  # the default NFE: the sweep names none
        assert _finite(row["rtf"]) and row["rtf"] == pytest.approx(row["synthesis_seconds"] / row["audio_seconds"])
    assert sweep["recompiles_after_ready"]["engine_describe"] == 0


def _assert_steady_and_first(section: dict) -> None:
    steady, first = section["steady"], section["first_request"]
    # --texts short leaves the sentence out of the series: the steady state is timed on its own
    assert steady["text"] == first["text"] == "sentence" and steady["nfe"] == first["nfe"] == 7
    assert steady["source"] == "measured"
    _assert_stats(steady["rtf"], 2)
    assert first["ratio"] == pytest.approx(first["rtf"] / steady["rtf"]["median"])


def test_meta_records_the_setup(report):
    meta = report["meta"]
    assert meta["device"] == "cpu" and meta["model"] == "demo"
    assert meta["cached_path"] == "placeholder"
    assert meta["texts"] == {"interjection": "Oh my god!"}
    assert meta["reference"]["text"] == "Some call me nature, others call me mother nature."
    assert 5.0 < meta["reference"]["seconds"] < 5.6  # f5-tts's basic_ref_en.wav
    assert report["failed"] == []
    assert report["checkpoint"]["arch"] == "F5TTS_demo_tiny" and report["checkpoint"]["generated"] is True


def test_upstream_section(report):
    up = report["sections"]["upstream"]
    _assert_rows(up["results"], [7], ["interjection"], 2)
    assert up["params"] > 0 and _finite(up["load_seconds"])
    assert up["dit_step"]["frames"] == up["dit_step"]["run_frames"] == 855 and up["dit_step"]["batch"] == 2
    _assert_stats(up["dit_step"]["ms"], 5)


def test_engine_section(report):
    eng = report["sections"]["engine"]
    _assert_rows(eng["results"], [7], ["interjection"], 2)
    assert _finite(eng["warmup"]["seconds"]) and eng["warmup"]["compiled"] is False  # CPU runs eager
    assert eng["first_request"]["text"] == "sentence" and eng["first_request"]["rtf"] > 0
    assert eng["time_to_first_audio"]["text"] == "chat"
    _assert_stats(eng["time_to_first_audio"]["seconds"], 2)
    assert eng["recompiles_after_ready"]["engine_describe"] == 0
    assert eng["recompiles_after_ready"]["dynamo"]["unique_graphs"] == 0
    assert eng["dit_step"]["frames"] == 855 and eng["dit_step"]["compiled"] is False
    _assert_stats(eng["dit_step"]["ms"], 5)
    assert eng["dit_step"]["dynamo"]["unique_graphs"] == 0
    assert eng["describe"]["nfe_step"] == 7  # bench.toml's default, not the caller's ISHOWTTS_EDGE_ override
    _assert_steady_and_first(eng)
    _assert_sweep(eng["length_sweep"])
    assert eng["length_sweep"]["recompiles_after_ready"]["dynamo"]["unique_graphs"] == 0
    assert eng["length_sweep"]["recompiles_after_ready"]["dynamo_sweep"]["unique_graphs"] == 0
    assert eng["first_request"]["wall_seconds"] >= eng["first_request"]["seconds"]
    assert eng["peak_gpu_memory_bytes"] is None  # CPU: no GPU figure rather than a made-up one
    # Same weights on both sides: the engine's model has upstream's parameter count.
    assert eng["params"] == report["sections"]["upstream"]["params"]


def test_daemon_cold_and_warm(report):
    daemon = report["sections"]["daemon"]
    cold, warm = daemon["cold"], daemon["warm"]
    _assert_rows(cold["results"], [7], ["interjection"], 2)
    assert warm["results"] == []  # the second start measures start-up, first request and TTFA only
    for start in (cold, warm):
        assert start["ready_seconds"] > 0 and _finite(start["warmup"]["seconds"])
        assert start["first_request"]["roundtrip_seconds"] >= start["first_request"]["seconds"] > 0
        _assert_stats(start["time_to_first_audio"]["seconds"], 2)
        assert _finite(start["overhead_seconds"]["median"])
        assert start["recompiles_after_ready"]["engine_describe"] == 0
        assert start["exit_code"] == 0  # stopped cleanly by SIGTERM
        assert start["describe"]["model"] == "F5TTS_demo_tiny" and start["describe"]["nfe_step"] == 7
        assert start["state"] == "ready" and start["gpu_memory_used_bytes"] is None
        assert start["peak_rss_bytes"] > 0
        _assert_steady_and_first(start)
        assert start["first_request"]["ratio_roundtrip"] == pytest.approx(
            start["first_request"]["roundtrip_seconds"] / start["steady"]["wall_seconds"]["median"])
        _assert_sweep(start["length_sweep"])
        assert start["length_sweep"]["recompiles_after_ready"]["before_sweep"] == 0
        idle = start["after_idle"]
        assert idle["idle_seconds"] == 1.0 and idle["text"] == "sentence" and idle["nfe"] == 7
        for key in ("rtf", "roundtrip_seconds", "steady_rtf", "steady_roundtrip_seconds", "ratio", "ratio_roundtrip"):
            assert _finite(idle[key]) and idle[key] > 0, (key, idle)
        assert idle["steady_rtf"] == start["steady"]["rtf"]["median"]
        assert idle["ratio"] == pytest.approx(idle["rtf"] / idle["steady_rtf"])
        # The overhead split needs the daemon's server_seconds: present in every series or in none.
        series = start["results"] or []
        for key in ("transport_seconds", "daemon_seconds"):
            split = start[key]
            assert all((r[key] is None) == (split is None) for r in series)
            if split is not None:
                assert _finite(split["median"])
                assert len(split["per_series"]) == len(start["overhead_seconds"]["per_series"])
        for row in series:
            if row["transport_seconds"] is not None:
                assert row["overhead_seconds"]["mean"] == pytest.approx(
                    row["transport_seconds"]["mean"] + row["daemon_seconds"]["mean"])
    # The overhead's floor, measured once (cold start): a bare REQ/REP with the sentence's f32 reply.
    floor = cold["transport_floor"]
    sentence = next(r for r in cold["results"] if r["text"] == floor["text"] and r["nfe"] == floor["nfe"])
    assert floor["reply_bytes"] == round(sentence["audio_seconds"] * 24000) * 4
    assert floor["wait_seconds"] == sentence["synthesis_seconds"]["median"]
    _assert_stats(floor["seconds"], 2)
    assert warm["transport_floor"] is None
    # Streamed against whole, per measured text (cold start only): first audio no later than the whole reply.
    [stream] = cold["streaming"]
    assert stream["text"] == "interjection" and stream["nfe"] == 7 and "streaming" not in warm
    for key in ("ttfa_seconds", "stream_seconds", "whole_seconds"):
        _assert_stats(stream[key], 2)
    assert stream["ttfa_seconds"]["median"] <= stream["stream_seconds"]["median"]
    # Same text, same reference, same seed rule: all three sides produce the same length of audio.
    up = report["sections"]["upstream"]["results"][0]["audio_seconds"]
    assert cold["results"][0]["audio_seconds"] == pytest.approx(up, abs=0.02)


def test_printed_table_shows_the_new_figures(report, run_dir):
    stdout = (run_dir / "stdout.txt").read_text()
    assert "length sweep" in stdout and "recompiles after READY, read after the sweep" in stdout
    assert stdout.count("after 1 s idle") == 2  # cold and warm starts
    assert stdout.count("bare ZeroMQ REQ/REP on this machine") == 1
    assert "x steady" in stdout and "of it transport + client, daemon" in stdout
    assert stdout.count("streamed interjection (10 chars): TTFA median") == 1


def test_ratios_against_upstream(report):
    for side in ("engine", "daemon"):
        (item,) = report["ratios"][side]
        assert item["nfe"] == 7 and item["text"] == "interjection"
        assert item["ratio"] > 0 and item["ratio_synthesis"] > 0
        ours = report["sections"][side] if side == "engine" else report["sections"]["daemon"]["cold"]
        upstream = report["sections"]["upstream"]["results"][0]["rtf"]["median"]
        assert item["ratio"] == pytest.approx(ours["results"][0]["rtf_wall"]["median"] / upstream)


def _borrow(run_dir: Path, source: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        *BENCH, "--device", "cpu", "--model", "demo", "--texts", "short",
        "--skip", "engine,daemon", "--upstream-from", str(source),
        "--work-dir", str(run_dir / "work"), "--json", str(out),
    ]
    return subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=120, env=BENCH_ENV)


def test_upstream_section_can_be_borrowed_from_an_earlier_report(report, run_dir):
    out = run_dir / "borrowed.json"
    proc = _borrow(run_dir, run_dir / "out.json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(out.read_text())
    upstream = again["sections"]["upstream"]
    assert upstream["borrowed_from"]["path"] == str(run_dir / "out.json")
    assert upstream["results"] == report["sections"]["upstream"]["results"]
    assert again["checkpoint"]["generated"] is False  # the work dir's checkpoint was reused


def test_borrowing_refuses_a_report_of_something_else(report, run_dir):
    other = dict(report, meta={**report["meta"], "reference": {**report["meta"]["reference"], "text": "Other."}})
    source = run_dir / "other.json"
    source.write_text(json.dumps(other))
    proc = _borrow(run_dir, source, run_dir / "refused.json")
    assert proc.returncode != 0
    assert "measured with a different reference" in proc.stderr
    assert not (run_dir / "refused.json").exists()


def test_without_the_bench_extra_upstream_is_skipped_with_a_clear_message(tmp_path):
    """The .deb carries no hydra (nor the rest of the `bench` extra): upstream is skipped, said why, the rest runs."""
    out = tmp_path / "no-extra.json"
    without_hydra = "import sys; sys.modules['hydra'] = None; from ishowtts_edge.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", without_hydra, "bench", "--device", "cpu", "--model", "demo", "--texts", "short",
         "--upstream-nfe", "7", "--skip", "engine,daemon", "--no-cached-path", "--work-dir", str(tmp_path / "work"),
         "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=BENCH_ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    skipped = report["sections"]["upstream"]["skipped"]
    assert "'hydra'" in skipped and "`bench` extra" in skipped
    assert report["failed"] == [] and report["ratios"] == {}
    assert f"upstream: skipped: {skipped}" in proc.stdout


def test_bad_arguments_are_refused_clearly(tmp_path):
    proc = subprocess.run(
        [*BENCH, "--texts", "sonnet", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=BENCH_ENV,
    )
    assert proc.returncode == 2
    assert "unknown text 'sonnet'" in proc.stderr


ENGINE_AB = REPO / "scripts" / "engine_ab.py"


def run_engine_ab(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENGINE_AB), "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=timeout)


def engine_ab_report(tmp_path: Path, name: str, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    """One successful CPU run of engine_ab.py (2 steady requests) and its JSON report."""
    out = tmp_path / f"{name}.json"
    proc = run_engine_ab("--runs", "2", "--tag", name, "--work-dir", str(tmp_path / "work"), "--json", str(out), *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc


def test_engine_ab_cpu_smoke(tmp_path: Path) -> None:
    """scripts/engine_ab.py runs one engine variant end to end and writes its figures (no timing checks)."""
    report, proc = engine_ab_report(tmp_path, "cpu", "--model", "demo", "--new-lengths", "--profile")
    assert report["tag"] == "cpu" and report["engine"]["dtype"] == "float32"
    assert report["steady"]["n"] == 2 and len(report["steady"]["values"]) == 2
    assert report["first_request"]["rtf"] > 0 and report["recompiles_since_ready"] == 0
    assert [r["chars"] for r in report["new_lengths"]] == [20, 51, 10, 66, 78]
    assert all(r["first_ms"] > 0 and r["second_ms"] > 0 for r in report["vocoder_new_length"])
    assert "cpu: attention None, warm-up" in proc.stdout
    # --profile on a CPU run: no GPU figures, operators by self time, the attention among them
    for name in ("sentence", "vocoder"):
        prof = report["profile"][name]
        assert prof["gpu"] is None and prof["wall_us"] > 0 and list(prof["families_us"]) == ["cpu op"]
        assert prof["top"] and all(row["calls"] >= 1 for row in prof["top"])
    assert any("attention" in row["name"] for row in report["profile"]["sentence"]["top"])
    assert "profile sentence: wall" in proc.stdout


def test_engine_ab_through_the_daemon_cpu_smoke(tmp_path: Path) -> None:
    """--daemon runs the same variant through a real daemon process and reads RTF from its replies."""
    report, proc = engine_ab_report(tmp_path, "cpu", "--model", "demo", "--daemon", "--buckets", "256,384")
    assert report["through"] == "daemon" and report["engine"]["dtype"] == "float32"
    assert report["steady"]["n"] == 2 and all(v > 0 for v in report["steady"]["values"])
    assert report["overhead_ms_median"] > 0 and report["recompiles_since_ready"] == 0
    # the variant's settings reached the daemon's config
    config = Path(report["daemon_log"]).parent / "daemon.toml"
    assert "length_buckets = [256, 384]" in config.read_text()
    assert "cpu (daemon, attention None): ready" in proc.stdout

    # --config serves an existing TOML as it is (how a bench.toml is cross-checked from a plain parent)
    report, _ = engine_ab_report(tmp_path, "cfg", "--daemon", "--config", str(config))
    assert report["config"] == str(config) and report["engine"]["dtype"] == "float32"
    assert report["steady"]["n"] == 2 and all(v > 0 for v in report["steady"]["values"])


def test_engine_ab_refuses_in_process_options_with_daemon(tmp_path: Path) -> None:
    for args, message in ((["--daemon", "--new-lengths"], "not with --daemon"),
                          (["--daemon", "--profile"], "not with --daemon"),
                          (["--config", "x.toml"], "--config needs --daemon"),
                          (["--daemon", "--worker-thread"], "--worker-thread is an in-process option"),
                          (["--no-telemetry"], "--no-telemetry needs --daemon"),
                          (["--daemon", "--without", "fused_qkv"], "--without is an in-process option"),
                          (["--without", "fused_qkv,warp_drive"], "unknown part(s) warp_drive")):
        proc = run_engine_ab(*args, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, args


@pytest.mark.parametrize("kernel,family", [
    # names from an H200 profile of one sentence (torch 2.11, cuDNN SDPA, inductor)
    ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_f16_s16816fprop_analytic_f16_128x64_32x6_nhwc_align8>", "conv"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true>", "conv"),
    ("void implicit_convolve_sgemm<__half, __half, 128, 5, 5, 3, 3, 3, 1, false>", "conv"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_kernel0_", "attention"),
    ("triton_poi_fused__scaled_dot_product_cudnn_attention_add_cos_mul_neg_sin_slice_stack_transpose", "inductor fused"),
    ("nvjet_sm90_hsh_128x128_64x6_4x2_h_bz_bias_TNT", "matmul"),
    ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8_stage3", "matmul"),
    ("void vector_fft_c2r<64u, 8u>", "fft"),
    ("void at::native::elementwise_kernel<128, 4>", "other"),
])
def test_engine_ab_sorts_kernels_into_families(kernel: str, family: str) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("engine_ab_script", ENGINE_AB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.kernel_family(kernel) == family


def test_engine_ab_on_a_worker_thread_cpu_smoke(tmp_path: Path) -> None:
    """--worker-thread: load, warm-up and requests on one second thread (the daemon's layout)."""
    report, _ = engine_ab_report(tmp_path, "wt", "--model", "demo", "--worker-thread")
    assert report["worker_thread"] is True and report["steady"]["n"] == 2
    assert report["first_request"]["rtf"] > 0 and report["recompiles_since_ready"] == 0


def test_bench_clock_rows_follow_the_gpu(tmp_path: Path) -> None:
    """measure() reads the GPU clock after every timed call and summarises it per row (fake Orin sysfs)."""
    from fakes.board import FakeBoard

    from ishowtts_edge.config import TelemetryConfig
    from ishowtts_edge.telemetry import open_direct_source

    board = FakeBoard(tmp_path)
    clocks = measure.GpuClocks(open_direct_source(TelemetryConfig(sysfs_root=board.sysfs_root)))
    freqs = iter([1_300_500_000, 612_000_000, 1_300_500_000])

    def synth(seed: int):
        if seed < 10_000:  # a timed call (warm-up calls use seeds from 10000): the GPU clock moves
            board.set_gpu_freq(cur_hz=next(freqs))
        return measure.Sample(seconds=0.1, audio_seconds=1.0, wall_seconds=0.1)

    row = measure.measure("fake", synth, warmup=1, runs=3, clocks=clocks)
    assert row["gpu_clock"]["source"] == "sysfs"
    assert row["gpu_clock"]["mhz"]["values"] == [1300.5, 612.0, 1300.5]
    assert row["gpu_clock"]["mhz"]["min"] == 612.0

    # the GPU node vanishes mid-run (early boot, a driver reload): the series is still
    # measured, and a row without a single reading says so with None instead of a number
    board.remove_gpu()
    fixed = lambda seed: measure.Sample(seconds=0.1, audio_seconds=1.0, wall_seconds=0.1)  # noqa: E731
    row = measure.measure("clock gone", fixed, warmup=0, runs=2, clocks=clocks)
    assert row["rtf"]["n"] == 2 and row["gpu_clock"] is None


SERVER_OVERHEAD = REPO / "scripts" / "server_overhead.py"


def test_server_overhead_measures_the_floor_and_the_daemons_front_end(tmp_path: Path) -> None:
    """scripts/server_overhead.py: a bare REQ/REP and the real Server, each in its own process (no timing checks)."""
    out = tmp_path / "o.json"
    proc = subprocess.run([sys.executable, str(SERVER_OVERHEAD), "--runs", "5", "--wait", "0.002",
                           "--reply-bytes", "4096", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["floor"]["overhead_seconds"]["n"] == 5 and report["server"]["overhead_seconds"]["n"] == 5
    # only the daemon's Server says how long it held the request (server_seconds in its reply header)
    assert "inside_server_seconds" in report["server"] and "inside_server_seconds" not in report["floor"]
    assert report["added_by_server_seconds"] == pytest.approx(
        report["server"]["overhead_seconds"]["median"] - report["floor"]["overhead_seconds"]["median"])
    assert "the server adds" in proc.stdout
    refused = subprocess.run([sys.executable, str(SERVER_OVERHEAD), "--runs", "0"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "--runs and --reply-bytes must be positive" in refused.stderr
