"""The run's report: ratios against upstream, and the table printed on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .measure import find_row
from .texts import TTFA_TEXT


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """The machine-readable report at ``path`` (its folder made), when one was asked for."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str))


def ratios(sections: dict[str, Any]) -> dict[str, Any]:
    """our RTF median / upstream RTF median at equal NFE and text (in this run, unless borrowed)."""
    up = sections.get("upstream") or {}
    out: dict[str, Any] = {}
    for side, rows in (
        ("engine", (sections.get("engine") or {}).get("results")),
        ("daemon", ((sections.get("daemon") or {}).get("cold") or {}).get("results")),
    ):
        if not rows or not up.get("results"):
            continue
        side_out = []
        for row in rows:
            ref = find_row(up["results"], row["nfe"], row["text"])
            if ref is not None and ref["rtf"]["median"] > 0:
                side_out.append({
                    "nfe": row["nfe"],
                    "text": row["text"],
                    # caller's view on both sides: upstream is timed around F5TTS.infer, so ours
                    # around Engine.synthesize / the ZeroMQ round trip
                    "ratio": row["rtf_wall"]["median"] / ref["rtf"]["median"],
                    # our own synthesis_seconds (what the daemon reports and the monitor uses)
                    "ratio_synthesis": row["rtf"]["median"] / ref["rtf"]["median"],
                })
        out[side] = side_out
    return out


def fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def print_table(report: dict[str, Any]) -> None:
    out = sys.stdout
    meta = report["meta"]
    ck = report.get("checkpoint") or {}
    print(f"\nishowtts-edge bench  {meta['machine'].get('gpu') or meta['machine']['platform']}  "
          f"device={meta['device']}  model={ck.get('arch')}  runs={meta['runs']} warmup={meta['warmup']}", file=out)
    print(f"reference: {meta['reference']['path']} ({fmt(meta['reference'].get('seconds'), '.2f')} s) "
          f"\"{meta['reference']['text']}\"", file=out)
    rows = []
    sec = report["sections"]
    for side, rows_src in (
        ("upstream", (sec.get("upstream") or {}).get("results")),
        ("engine", (sec.get("engine") or {}).get("results")),
        ("daemon", ((sec.get("daemon") or {}).get("cold") or {}).get("results")),
    ):
        for r in rows_src or []:
            ratio = None
            for item in (report.get("ratios") or {}).get(side, []):
                if item["nfe"] == r["nfe"] and item["text"] == r["text"]:
                    ratio = item["ratio"]
            rows.append((side, r["nfe"], r["text"], r["audio_seconds"], r["rtf"]["median"], r["rtf"]["p90"],
                         r["rtf"]["cv"], r["wall_seconds"]["median"], ratio))
    header = f"{'side':<9}{'nfe':>4}  {'text':<13}{'audio s':>8}{'RTF med':>9}{'RTF p90':>9}{'CV':>7}{'wall med':>10}{'vs up':>7}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for side, nfe, text, audio, med, p90, cv, wall, ratio in rows:
        print(f"{side:<9}{nfe:>4}  {text:<13}{audio:>8.2f}{med:>9.4f}{p90:>9.4f}{cv:>7.3f}{wall:>10.4f}"
              f"{fmt(ratio, '.3f'):>7}", file=out)
    print("", file=out)
    for name in ("upstream", "engine"):
        s = sec.get(name) or {}
        if "error" in s:
            print(f"{name}: FAILED: {s['error'].splitlines()[0]}", file=out)
        elif "skipped" in s:
            print(f"{name}: skipped: {s['skipped']}", file=out)
    e = sec.get("engine") or {}
    if "warmup" in e:
        rec = e["recompiles_after_ready"]
        print(f"engine:  load {e['load_seconds']:.2f} s, warm-up {e['warmup']['seconds']:.2f} s "
              f"(compiled={e['warmup']['compiled']}, {e['warmup']['dynamo']['unique_graphs']} graphs), "
              f"first request RTF {e['first_request']['rtf']:.4f} ({fmt(e['first_request'].get('ratio'), '.2f')}x "
              f"steady), recompiles after READY "
              f"{rec['engine_describe']} (dynamo graphs +{rec['dynamo']['unique_graphs']})", file=out)
        print(f"         time to first audio ({TTFA_TEXT}) median {e['time_to_first_audio']['seconds']['median']:.4f} s"
              f" (whole audio: = time to the result); peak GPU memory {mib(e.get('peak_gpu_memory_bytes'))}",
              file=out)
    for name in ("upstream", "engine"):
        step = (sec.get(name) or {}).get("dit_step") or {}
        if "ms" in step:
            print(f"{name + ':':<9} one guided DiT step, batch 2 x {step['frames']} frames"
                  f"{'' if step['run_frames'] == step['frames'] else ' (run at its bucket, ' + str(step['run_frames']) + ')'}"
                  f": median {step['ms']['median']:.2f} ms, p90 {step['ms']['p90']:.2f} ms", file=out)
    u = sec.get("upstream") or {}
    if "load_seconds" in u:
        borrowed = f" (from {u['borrowed_from']['path']})" if u.get("borrowed_from") else ""
        print(f"upstream{borrowed}: load {u['load_seconds']:.2f} s, peak GPU memory "
              f"{mib(u.get('peak_gpu_memory_bytes'))}", file=out)
    for label, d in ((sec.get("daemon") or {}).items()):
        if "error" in d:
            print(f"daemon {label}: FAILED: {d['error'].splitlines()[0]}", file=out)
            continue
        print(f"daemon {label}: READY after {d['ready_seconds']:.2f} s (warm-up {fmt(d['warmup'].get('seconds'), '.2f')} s), "
              f"first request RTF {d['first_request']['rtf']:.4f} round trip {d['first_request']['roundtrip_seconds']:.4f} s, "
              f"TTFA median {d['time_to_first_audio']['seconds']['median']:.4f} s, overhead median "
              f"{d['overhead_seconds']['median'] * 1000:.2f} ms, recompiles after READY "
              f"{d['recompiles_after_ready']['engine_describe']}"
              f"{'' if d.get('state') == 'ready' else ', state ' + str(d.get('state')) + ' ' + str(d.get('degraded'))}",
              file=out)
        steady = d.get("steady") or {}
        if steady:
            print(f"         first request vs steady ({steady['text']}, NFE {steady['nfe']}, median RTF "
                  f"{steady['rtf']['median']:.4f}, round trip {steady['wall_seconds']['median']:.4f} s): RTF "
                  f"{fmt(d['first_request'].get('ratio'), '.2f')}x, round trip "
                  f"{fmt(d['first_request'].get('ratio_roundtrip'), '.2f')}x", file=out)
        idle = d.get("after_idle")
        if idle:
            print(f"         after {idle['idle_seconds']:g} s idle: RTF {idle['rtf']:.4f} "
                  f"({fmt(idle['ratio'], '.2f')}x steady), round trip {idle['roundtrip_seconds']:.4f} s "
                  f"({fmt(idle['ratio_roundtrip'], '.2f')}x steady)", file=out)
        print_overhead(d, out)
        for row in d.get("streaming") or []:
            print(f"         streamed {row['text']} ({row['chars']} chars): TTFA median {row['ttfa_seconds']['median']:.4f} s"
                  f" vs whole {row['whole_seconds']['median']:.4f} s ({fmt(row['ttfa_ratio'], '.2f')}x); stream total "
                  f"{row['stream_seconds']['median']:.4f} s ({fmt(row['total_ratio'], '.2f')}x whole)", file=out)
    print_sweep(sec, out)


def print_overhead(d: dict[str, Any], out: Any) -> None:
    """Per series: overhead (round trip - synthesis) = transport + client, and the daemon's own part."""
    total = d.get("overhead_seconds") or {}
    transport = {(r["nfe"], r["text"]): r for r in (d.get("transport_seconds") or {}).get("per_series", [])}
    own = {(r["nfe"], r["text"]): r for r in (d.get("daemon_seconds") or {}).get("per_series", [])}
    if not total.get("per_series"):
        return
    note = "" if transport else " (no split: the daemon's replies carry no server_seconds)"
    print(f"         overhead per series, median ms: round trip - synthesis, of it transport + client, "
          f"daemon{note}", file=out)
    for r in total["per_series"]:
        key = (r["nfe"], r["text"])
        t, o = transport.get(key), own.get(key)
        print(f"           nfe {r['nfe']:>2} {r['text']:<13} {r['median'] * 1000:7.2f}  "
              f"{fmt(t and t['median'] * 1000, '.2f'):>7}  {fmt(o and o['median'] * 1000, '.2f'):>7}", file=out)
    floor = d.get("transport_floor")
    if floor and "error" in floor:
        print(f"         bare ZeroMQ REQ/REP floor: not measured ({floor['error']})", file=out)
    elif floor:
        print(f"         bare ZeroMQ REQ/REP on this machine, {floor['reply_bytes'] / 1000:.0f} KB reply after "
              f"{floor['wait_seconds'] * 1000:.1f} ms busy (the {floor['text']}'s): median "
              f"{floor['seconds']['median'] * 1000:.2f} ms, p90 {floor['seconds']['p90'] * 1000:.2f} ms", file=out)


def print_sweep(sec: dict[str, Any], out: Any) -> None:
    """The length sweep of every side that ran it, side by side: one line per text length."""
    sides = [("engine", sec.get("engine") or {})]
    sides += [(f"daemon {label}", d) for label, d in (sec.get("daemon") or {}).items()]
    sides = [(name, s["length_sweep"]) for name, s in sides if s.get("length_sweep")]
    if not sides:
        return
    print("", file=out)
    header = f"{'chars':>5}{'audio s':>9}{'frames':>8}{'chunks':>7}" + "".join(f"{n + ' RTF':>18}" for n, _ in sides)
    print("length sweep (default NFE, seed 0, one call each)", file=out)
    print(header, file=out)
    print("-" * len(header), file=out)
    rows = {r["chars"]: r for r in sides[0][1]["lengths"]}
    for chars, first in rows.items():
        rtfs = []
        for _, sweep in sides:
            row = next((r for r in sweep["lengths"] if r["chars"] == chars), None)
            rtfs.append(fmt(row and row["rtf"], ".4f"))
        print(f"{chars:>5}{first['audio_seconds']:>9.2f}{fmt(first['mel_frames']):>8}{fmt(first['chunks']):>7}"
              + "".join(f"{r:>18}" for r in rtfs), file=out)
    counts = []
    for name, sweep in sides:
        rec = sweep["recompiles_after_ready"]
        extra = f", dynamo graphs +{rec['dynamo']['unique_graphs']}" if "dynamo" in rec else ""
        counts.append(f"{name} {fmt(rec['engine_describe'])}{extra}")
    print(f"recompiles after READY, read after the sweep: {'; '.join(counts)}", file=out)
