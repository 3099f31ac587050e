"""A seeded fuzz of the daemon's wire protocol: generated messages, what each must get back, and a runner.

:func:`generate` turns a seed into the same list of :class:`Case` every time: malformed
and non-UTF-8 headers, wrong types, out-of-range and huge fields, odd Unicode, wrong
frame counts, binary junk, unknown ops, byte-level mutations of valid requests and a few
valid-but-edge requests.  Each case says which socket sends it (REQ, or a DEALER with
or without the empty delimiter), whether it deserves a reply and which stable codes
that reply may carry.  Only ``model_budget`` cases may reach the model (they cost CPU);
the rest are refused before synthesis.

:class:`Fuzzer` sends the cases one at a time to a live daemon and checks every reply;
:class:`Tally` holds the figures.  Run against a running daemon by hand::

    python tests/wire_fuzz.py --endpoint ipc:///run/ishowtts-edge/tts.sock --seed 7 --count 3000

(its server limits must be given with ``--max-message-bytes`` etc. when not the defaults).
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from ishowtts_edge.protocol import OPS, ErrorCode, Limits

CONTROL = ("ping", "health", "status", "voices")
STABLE_CODES = frozenset(c.value for c in ErrorCode) - {ErrorCode.INTERNAL.value}
BR = frozenset({"bad_request"})
OK = frozenset({"ok"})
#: The reply must carry a daemon-chosen id: the request had none.
GENERATED = object()
MAX_MESSAGE_CHARS = 1000
LANES = ("req", "dealer", "bare")  # bare: a DEALER that sends no empty delimiter


@dataclass
class Case:
    n: int
    kind: str
    frames: list[bytes]
    lane: str = "req"
    #: False only where the protocol documents no reply (a frame over ZeroMQ's MAXMSGSIZE).
    reply: bool = True
    #: Codes the reply may carry ("ok" for success); None: any stable code.
    codes: frozenset[str] | None = None
    #: Allowed reply ids (compared with their JSON type); None: not checked.
    ids: tuple[Any, ...] | None = None
    #: The known op this request names, else None.
    op: str | None = None
    runs_model: bool = False
    #: Frames a bare DEALER gets back before the reply (what the daemon took for its envelope).
    prefix: list[bytes] = field(default_factory=list)
    fmt: str | None = None
    #: False where the op the daemon reads is not known (a mutated header).
    check_op: bool = True

    def describe(self) -> str:
        head = self.frames[0][:80] if self.frames else b""
        return f"#{self.n} {self.kind} lane={self.lane} frames={len(self.frames)} head={head!r}"


# -- building blocks ---------------------------------------------------------------------------

ODD_STRINGS = [
    "", " ", "\u0000", "a\u0000b", "\n<3>daemon: forged", "\r\n", "\t", "\u202eevil", "\ufeff", "\uffff",
    "\U0010ffff", "\U0001F600", "\U0001F468\u200d\U0001F469\u200d\U0001F467", "e\u0301\u0301\u0301", "\u200b",
    "مرحبا", "שלום", "中文", "日本語テキスト", "🙂" * 40, "\\", '"', "'", "%s%n%x", "${jndi:ldap://x}",
    "../../etc/passwd", "null", "true", "0", "-1", "NaN", "x" * 129,
]
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 10**40, 0.5, -0.0, 1e308, 1e-320, float("nan"),
    float("inf"), float("-inf"), "", "x", [], [1, 2], {}, {"a": 1}, [[[]]], "\U0001F600", "7",
]
#: Short texts the demo model can say (cheaply): odd scripts, marks and control characters included.
EDGE_TEXTS = [
    "Hi.", "a", "\U0001F600", "中文测试。", "مرحبا بالعالم.", "e\u0301\u0301\u0301", "a\u0000b.",
    "1234567890", "...!!!???", "\u202eevil text", "Hello,world;again:yes.", "\ufeffBOM first.",
    "ÀÉÎÕÜ ñ ç ß.", "日本語のテキストです。", "x\u0301" * 20, "Tab\tand\nnewline.", "-", "\U0010ffff",
    "Ok " * 30,
]
#: Texts with nothing to say (only format, control or space characters): refused bad_request.
INVISIBLE_TEXTS = ["\u200b", "\ufeff", " \u200b\t", "\u0000", "\u2060\u200d"]
UNKNOWN_OPS = ["", "sing", "PING", "Ping", " ping", "ping ", "ping\n", "p\u0456ng", "synthesise", "status\u0000",
               "shutdown", "reload", "__init__", "ping;status", "*", "\U0001F600"]
NUMERIC_FIELDS = {
    "nfe_step": ([0, 65, -1, 1000, 2**40], ["7", 7.0, True, [7], {"n": 7}, 1.5]),
    "cfg_strength": ([-0.1, 10.01, 1e9, -1e9, 2**60], ["2", True, [2.0], float("nan"), float("inf")]),
    "sway_sampling_coef": ([-2.01, 2.01, 1e9], ["-1", False, float("-inf")]),
    "speed": ([0.29, 3.01, 0, -1, 0.0], ["1", True, float("nan"), [1]]),
    "seed": ([-1, 2**31, 2**63, 10**30], ["1", 1.0, True, 0.5]),
}
VALID_EXTREMES = {
    "nfe_step": [1, 2, 3],
    "cfg_strength": [0, 0.0, 10, 10.0, 2],
    "sway_sampling_coef": [-2, -2.0, 2.0, 0],
    "speed": [0.3, 3.0, 3, 1],
    "seed": [0, 2**31 - 1],
}


def _ids_for(header: Any, surrogate: bool = False) -> tuple[Any, ...]:
    """Which reply ids the protocol allows for a request with this header object."""
    if not isinstance(header, dict):
        return (None,)
    raw = header.get("id")
    if raw is None:
        valid: tuple[Any, ...] = (GENERATED,)
    elif isinstance(raw, (str, int)) and not isinstance(raw, bool) and len(str(raw)) <= 128:
        valid = (raw,)
    else:
        valid = (None,)
    return valid + (None,) if surrogate else valid


def _op_of(header: Any) -> str | None:
    op = header.get("op") if isinstance(header, dict) else None
    return op if isinstance(op, str) and op in OPS else None


def _dumps(header: Any, rng: random.Random) -> bytes:
    """JSON as a peer might write it: compact or spaced, escaped or raw UTF-8 (raw only when UTF-8 can carry it)."""
    seps = (",", ":") if rng.random() < 0.7 else (", ", ": ")
    try:
        return json.dumps(header, separators=seps, ensure_ascii=rng.random() < 0.3).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(header, separators=seps, ensure_ascii=True).encode("ascii")


def wav_bytes(samples: Any, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples), rate, format=fmt, subtype=subtype)
    return _zero_peak_time(buf.getvalue())


def _zero_peak_time(data: bytes) -> bytes:
    """libsndfile stamps a float WAV's PEAK chunk with the current time (whole seconds), so the same
    seed gave other bytes once the clock had moved on; zeroed here, the bytes depend on the seed alone."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    out = bytearray(data)
    at = 12
    while at + 8 <= len(out):
        size = int.from_bytes(out[at + 4 : at + 8], "little")
        if out[at : at + 4] == b"PEAK" and size >= 8:
            out[at + 12 : at + 16] = bytes(4)  # after the chunk header and the version field
            break
        at += 8 + size + (size & 1)
    return bytes(out)


def _tone(seconds: float, rate: int = 24000, channels: int = 1) -> Any:
    import numpy as np

    t = np.arange(int(rate * seconds)) / rate
    x = (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


# -- the generator ---------------------------------------------------------------------------


class _Gen:
    def __init__(self, seed: int, limits: Limits, model_budget: int) -> None:
        self.rng = random.Random(seed)
        self.limits = limits
        self.budget = model_budget
        self.n = 0
        self.tag = f"fz{seed}"

    def rid(self) -> str:
        return f"{self.tag}-{self.n}"

    def case(self, kind: str, frames: list[bytes], **kw: Any) -> Case:
        return Case(n=self.n, kind=kind, frames=frames, **kw)

    def header_case(self, kind: str, header: Any, extra: list[bytes] | None = None, *, codes=None,
                    surrogate: bool = False, **kw: Any) -> Case:
        kw.setdefault("ids", _ids_for(header, surrogate))
        return self.case(kind, [_dumps(header, self.rng), *(extra or [])], codes=codes, op=_op_of(header), **kw)

    # Each maker returns one case; those that would run the model are chosen only while budget lasts.

    def junk(self) -> Case:
        r = self.rng
        first = bytes([r.choice([b for b in range(256) if b not in b"{ \t\r\n"])])
        frames = [first + r.randbytes(r.randrange(0, 300))]
        frames += [r.randbytes(r.randrange(0, 64)) for _ in range(r.choice([0, 0, 1, 3]))]
        return self.case("binary junk", frames, codes=BR, ids=(None,))

    def broken_json(self) -> Case:
        r = self.rng
        header = {"v": 1, "op": r.choice(OPS), "id": self.rid(), "text": "Hi."}
        raw = json.dumps(header).encode()
        choice = r.randrange(4)
        if choice == 0:
            return self.case("truncated JSON", [raw[: r.randrange(0, len(raw) - 1)]], codes=BR, ids=(None,))
        if choice == 1:
            raw = r.choice([
                b"{'op': 'ping'}", b'{"op": "ping",}', b'{"op": "ping"} trailing', b'{"op": ping}', b"{op: 1}",
                b'{"op": "ping" /* c */}', b'{"op": "ping"}{"op": "ping"}', b"\xef\xbb\xbf" + raw, b"{", b"}",
                b'{"op": "ping", "x": 01}', b'{"op": "ping", "x": .5}', b'{"op": "ping", "x": 0x10}', b'{"op": "\x01"}',
                b'{"op": "ping", "x": "\\q"}', b'{"op": "ping", "x": "\\u12"}', b'{"op": "ping", "x": tru}',
            ])
            return self.case("malformed JSON", [raw], codes=BR, ids=(None,))
        if choice == 2:
            raw = r.choice([raw.decode().encode("utf-16"), raw.decode().encode("utf-32"),
                            raw[:5] + b"\xff" + raw[5:], raw[:5] + b"\xc0\xaf" + raw[5:], raw[:5] + b"\xed\xa0\x80" + raw[5:],
                            raw.replace(b'"Hi."', b'"H\xe9."')])
            return self.case("not UTF-8 JSON", [raw], codes=BR, ids=(None,))
        value = r.choice(["[]", "[1,2]", '"ping"', "1", "null", "true", "1e999", '[{"op":"ping"}]', '""', "-0"])
        return self.case("JSON that is not an object", [value.encode()], codes=BR, ids=(None,))

    def version(self) -> Case:
        r = self.rng
        v = r.choice([0, 3, -1, "1", "2", True, False, None, [], {}, 1.5, 2.5, 1e300, 10**30, "v1", [1]])
        header = {"v": v, "op": r.choice(OPS), "id": self.rid()}
        if r.random() < 0.3:
            header["op"] = r.choice(UNKNOWN_OPS + [None, 3])  # the version is judged first
        return self.header_case("wrong version", header, codes=frozenset({"unsupported_version"}))

    def op_type(self) -> Case:
        r = self.rng
        header: dict[str, Any] = {"id": self.rid()}
        if r.random() < 0.8:
            header["op"] = r.choice([None, 1, 0, [], ["ping"], {}, {"op": "ping"}, True, 1.5])
        return self.header_case("op missing or not a string", header, codes=BR)

    def unknown_op(self) -> Case:
        r = self.rng
        op = r.choice(UNKNOWN_OPS + [r.choice(ODD_STRINGS), "op" * r.randrange(1, 5000)])
        header = {"op": op, "id": self.rid(), "text": "Hi."}
        return self.header_case("unknown op", header, codes=frozenset({"unknown_op"}))

    def ids(self) -> Case:
        r = self.rng
        op = r.choice(CONTROL)
        good = [self.rid(), "", "\U0001F600" * 128, "x" * 128, "\n<0>daemon: forged line", "id with spaces", "\u0000",
                self.n, -self.n, 0, 2**63, -(10**126), 10**127, None]
        bad = [True, False, 1.5, -0.0, [], [self.rid()], {"id": 1}, "x" * 129, "\U0001F600" * 129, 10**128, -(10**127)]
        if r.random() < 0.6:
            return self.header_case("valid ids", {"op": op, "id": r.choice(good)}, codes=OK)
        return self.header_case("invalid ids", {"op": op, "id": r.choice(bad)}, codes=BR)

    def control(self) -> Case:
        r = self.rng
        op = r.choice(CONTROL)
        header: dict[str, Any] = {"op": op, "id": self.rid()}
        if r.random() < 0.5:
            header["v"] = 1
        if r.random() < 0.5:
            for _ in range(r.randrange(1, 4)):
                header[r.choice(ODD_STRINGS + ["text", "format", "x"])] = r.choice(ODD_VALUES)
            return self.header_case("control op with extra fields", header, codes=None)
        return self.header_case("control op", header, codes=OK)

    def frames_shape(self) -> Case:
        r = self.rng
        op = r.choice(CONTROL)
        header = {"op": op, "id": self.rid()}
        extra = [r.choice([b"", b"x", r.randbytes(r.randrange(1, 100)), b'{"op":"ping"}']) for _ in range(r.randrange(1, 60))]
        kind = r.randrange(3)
        if kind == 0:
            return self.header_case("control op with binary frames", header, extra, codes=BR)
        if kind == 1:
            return self.case("empty header frame", [b"", *([_dumps(header, r)] if r.random() < 0.5 else [])],
                             codes=BR, ids=(None,))
        header = {"op": "synthesize", "id": self.rid(), "text": "Hi.", "ref_text": "Hi."}
        return self.header_case("synthesize with two or more binary frames", header, extra + [b"a"], codes=BR)

    def bare_dealer_envelope(self) -> Case:
        """A DEALER without a delimiter whose message holds an empty frame: the frames before it are its envelope."""
        r = self.rng
        lead = [r.choice([b"junk", r.randbytes(8), b'{"op":"sing"}']) for _ in range(r.randrange(1, 3))]
        if r.random() < 0.6:
            header = {"op": r.choice(CONTROL), "id": self.rid()}
            return Case(n=self.n, kind="bare DEALER with an empty frame", frames=[*lead, b"", _dumps(header, r)],
                        lane="bare", codes=OK, ids=(header["id"],), op=header["op"], prefix=[*lead, b""])
        return Case(n=self.n, kind="bare DEALER with only an envelope", frames=[*lead, b""], lane="bare", codes=BR,
                    ids=(None,), prefix=[*lead, b""])

    def synth_invalid(self) -> Case:
        """A synthesize refused before it reaches the model."""
        r = self.rng
        header: dict[str, Any] = {"op": "synthesize", "id": self.rid(), "text": "Hi.", "nfe_step": 1}
        choice = r.randrange(9)
        if choice == 0:
            what = r.choice(["missing", "type", "blank"])
            if what == "missing":
                del header["text"]
            elif what == "type":
                header["text"] = r.choice([1, None, [], ["Hi."], {}, True, 1.5])
            else:
                header["text"] = r.choice(["", " ", "\t\n", "\u3000", "\u00a0", "\u2028 \u2029", " " * 500])
            return self.header_case("synthesize text missing, mistyped or blank", header, codes=BR)
        if choice == 1:
            name = r.choice(sorted(NUMERIC_FIELDS))
            out_of_range, mistyped = NUMERIC_FIELDS[name]
            header[name] = r.choice(out_of_range + mistyped)
            return self.header_case(f"synthesize {name} out of range or mistyped", header, codes=BR)
        if choice == 2:
            header["format"] = r.choice(["mp3", "WAV", "", "wav ", 1, None, ["wav"], "pcm_s16be"])
            return self.header_case("synthesize with an unknown format", header, codes=BR)
        if choice == 3:
            header["voice"] = r.choice([1, [], True, {"id": "demo"}, 0.5])
            return self.header_case("synthesize voice mistyped", header, codes=BR)
        if choice == 4:
            header["voice"] = r.choice(["nobody", "DEMO", "demo\n", " demo", "../../etc/passwd", "v" * 1000,
                                        "\U0001F600", "demo\u0000"])
            return self.header_case("synthesize an unknown voice", header, codes=frozenset({"unknown_voice"}))
        if choice == 5:
            header[r.choice(["colour", "Text", "nfe", "__proto__", "", "ref", "v2", "\U0001F600", "id "])] = r.choice(ODD_VALUES)
            return self.header_case("synthesize with an unknown field", header, codes=BR)
        if choice == 6:
            header["text"] = r.choice(["a", "Hi. ", "\U0001F600", "中"]) * (self.limits.max_text_chars + 1 + r.randrange(50))
            header["text"] = header["text"][: self.limits.max_text_chars + 1 + r.randrange(3000)]
            return self.header_case("synthesize text too long", header, codes=frozenset({"text_too_long"}))
        if choice == 7:
            variant = r.randrange(3)
            if variant == 0:
                header["ref_text"] = r.choice(["Hi.", "", 1])
                return self.header_case("ref_text without a reference frame", header, codes=BR)
            if variant == 1:
                return self.header_case("reference frame without ref_text", header, [r.randbytes(100)], codes=BR)
            header.update(ref_text="Hi.", voice="demo")
            return self.header_case("reference frame and voice", header, [r.randbytes(100)], codes=BR)
        header["text"] = r.choice(["\ud800", "Hi \udfff", "\udc00\ud800"])
        if r.random() < 0.5:
            header = {"op": "ping", "id": self.rid(), r.choice(["\ud83d", "x"]): "\udead"}
        return self.header_case("lone surrogate", header, codes=BR, surrogate=True)

    def reference_refused(self) -> Case:
        """An ad-hoc reference the daemon must refuse with bad_reference (decoded on the worker, no model run)."""
        import numpy as np

        r = self.rng
        header = {"op": "synthesize", "id": self.rid(), "text": "Hi.", "ref_text": "A reference.", "nfe_step": 1}
        ref = r.choice([
            lambda: r.randbytes(r.randrange(1, 3000)),
            lambda: b"RIFF" + r.randbytes(200),
            lambda: wav_bytes(np.zeros(0, np.float32), 24000),
            lambda: wav_bytes(np.zeros(1, np.float32), 24000),
            lambda: wav_bytes(_tone(0.2), 24000),
            lambda: wav_bytes(_tone(1.0, 7919), 7919),
            lambda: wav_bytes(np.full(24000, np.nan, np.float32), 24000, "FLOAT"),
            lambda: wav_bytes(_tone(1.0), 24000)[:60],
            lambda: b"fLaC" + r.randbytes(500),
            lambda: b"OggS" + r.randbytes(500),
        ])()
        return self.header_case("reference the daemon cannot use", header, [ref], codes=frozenset({"bad_reference"}))

    def size(self) -> Case:
        r = self.rng
        limit = self.limits.max_message_bytes
        choice = r.randrange(4)
        if choice == 0:  # the whole message over the limit, every frame under MAXMSGSIZE
            header = {"op": r.choice(OPS), "id": self.rid()}
            parts = r.randrange(2, 4)
            return self.header_case("message over max_message_bytes", header,
                                    [b"\0" * (limit // parts + 1)] * parts, codes=frozenset({"too_large"}), ids=(None,))
        if choice == 1:
            header = {"op": "synthesize", "id": self.rid(), "text": "Hi.", "ref_text": "A reference.", "nfe_step": 1}
            ref = b"RIFF" + b"\0" * (self.limits.max_reference_bytes + r.randrange(1, 1000))
            return self.header_case("reference over max_reference_bytes", header, [ref], codes=frozenset({"too_large"}))
        if choice == 2:  # huge, but under the limit
            big = "x" * r.randrange(limit // 4, limit // 2)
            header = r.choice([{"op": "ping", "id": self.rid(), "pad": big}, {"op": big, "id": self.rid()},
                               {"op": "ping", "id": big}, {"op": "synthesize", "id": self.rid(), "text": "Hi.", big[:1000]: 1},
                               {"op": "status", "id": self.rid(), "many": list(range(20000))},
                               {"op": "health", "id": self.rid(), **{f"k{i}": i for i in range(5000)}}])
            return self.header_case("huge field under the limit", header, codes=None)
        # One frame past MAXMSGSIZE: ZeroMQ drops the connection; documented as no reply.
        return self.case("frame over MAXMSGSIZE", [b"{" + b" " * (2 * limit + 10) + b"}"], reply=False)

    def deep(self, depth: int | None = None) -> Case:
        r = self.rng
        depth = depth if depth is not None else r.choice([10, 100, 500, 900, 2000, 50_000])
        nest = b"[" * depth + b"]" * depth
        key = r.choice([b"x", b"v", b"id", b"op"])
        tail = b',"y":"\\u0041"' if r.random() < 0.7 else b""
        raw = b'{"op":"ping","id":"' + self.rid().encode() + b'","' + key + b'":' + nest + tail + b"}"
        # "x": ok or, past the decoder's depth, bad_request; the others are wrong types for their keys.
        codes = {b"x": frozenset({"ok", "bad_request"}), b"v": frozenset({"unsupported_version", "bad_request"}),
                 b"id": BR, b"op": BR}[key]
        ids = (self.rid(), None) if key != b"id" else (None,)
        return self.case("deep nesting", [raw], codes=codes, ids=ids, op="ping" if key != b"op" else None)

    def mutation(self) -> Case:
        """Bytes of a valid request flipped, dropped or repeated; the voice is unknown, so even a valid result is cheap."""
        r = self.rng
        header = r.choice([
            {"v": 1, "op": "synthesize", "id": self.rid(), "text": "Hi there.", "voice": "nobody", "nfe_step": 1},
            {"v": 1, "op": r.choice(CONTROL), "id": self.rid()},
            {"op": "synthesize", "id": self.rid(), "text": "Hi.", "voice": "nobody", "speed": 1.5, "seed": 3},
        ])
        raw = bytearray(_dumps(header, r))
        for _ in range(r.randrange(1, 4)):
            at = r.randrange(len(raw))
            how = r.randrange(4)
            if how == 0:
                raw[at] = r.randrange(256)
            elif how == 1:
                del raw[at]
            elif how == 2:
                raw[at:at] = bytes([r.choice(b'{}[]",:\\0123456789 \x00\xff')])
            else:
                raw[at:at] = raw[at : at + r.randrange(1, 8)]
        return self.case("mutated request", [bytes(raw)], codes=None, ids=None, op=None, check_op=False)

    # -- the few that reach the model --

    def synth_valid(self) -> Case:
        r = self.rng
        invisible = r.random() < 0.1
        text = r.choice(INVISIBLE_TEXTS if invisible else EDGE_TEXTS)
        header: dict[str, Any] = {"op": "synthesize", "id": self.rid(), "text": text}
        header["nfe_step"] = r.choice(VALID_EXTREMES["nfe_step"])
        for name in ("cfg_strength", "sway_sampling_coef", "speed", "seed"):
            if r.random() < 0.4:
                header[name] = r.choice(VALID_EXTREMES[name])
        if r.random() < 0.6:
            header["format"] = r.choice(["wav", "pcm_s16le", "f32le"])
        if r.random() < 0.3:
            header["voice"] = r.choice(["demo", ""])
        if r.random() < 0.2:
            header["v"] = 1
        for name in ("voice", "seed", "speed"):
            if r.random() < 0.1:
                header[name] = None  # null means the daemon's default
        if invisible:
            return self.header_case("synthesize with nothing to say", header, codes=BR)
        return self.header_case("valid synthesize with an edge value", header, codes=OK, runs_model=True,
                                fmt=header.get("format") or "wav")

    def synth_reference(self) -> Case:
        r = self.rng
        rate, subtype, channels = r.choice([(24000, "PCM_16", 1), (16000, "PCM_16", 1), (44100, "FLOAT", 2),
                                            (8000, "PCM_U8", 1), (48000, "PCM_24", 1)])
        seconds = r.choice([1.0, 1.5]) if rate < 44100 else 0.6
        ref = wav_bytes(_tone(seconds, rate, channels), rate, subtype)
        header = {"op": "synthesize", "id": self.rid(), "text": r.choice(EDGE_TEXTS), "nfe_step": 1,
                  "ref_text": r.choice(["A short reference.", "中文参考。", "\U0001F600 ok"])}
        return self.header_case("valid synthesize with an ad-hoc reference", header, [ref], codes=OK, runs_model=True,
                                fmt="wav")

    def run_on(self) -> Case:
        """Long text without sentence breaks: synthesized or refused up front, never internal."""
        r = self.rng
        words = r.choice(["word", "a", "text", "中文"])
        text = (words + ("" if words == "中文" else " ")) * 400
        text = text[: r.choice([900, 1000])]
        header = {"op": "synthesize", "id": self.rid(), "text": text, "nfe_step": 1, "speed": r.choice([1.0, 0.3])}
        return self.header_case("run-on text without punctuation", header, codes=None, runs_model=True, fmt="wav")


def generate(seed: int, count: int, limits: Limits, model_budget: int = 30) -> list[Case]:
    """``count`` cases from ``seed``: the same list for the same arguments, on any machine."""
    g = _Gen(seed, limits, model_budget)
    cheap: list[tuple[float, Callable[[], Case]]] = [
        (8, g.junk), (10, g.broken_json), (5, g.version), (5, g.op_type), (6, g.unknown_op), (8, g.ids),
        (10, g.control), (6, g.frames_shape), (3, g.bare_dealer_envelope), (20, g.synth_invalid),
        (3, g.reference_refused), (2, g.size), (3, g.deep), (12, g.mutation),
    ]
    model: list[tuple[float, Callable[[], Case]]] = [(8, g.synth_valid), (2, g.synth_reference), (1, g.run_on)]
    weights = [w for w, _ in cheap]
    cases: list[Case] = []
    # Depths around the decoder's limit, where the daemon's own stack decides which step gives up first.
    sweep = list(range(960, 1010))
    model_every = max(1, count // max(1, model_budget))
    while len(cases) < count:
        g.n = len(cases)
        if sweep and g.n % 7 == 3:
            case = g.deep(sweep.pop(0))
        elif g.budget > 0 and g.n % model_every == model_every // 2:
            g.budget -= 1
            case = g.rng.choices([m for _, m in model], [w for w, _ in model])[0]()
        else:
            case = g.rng.choices([m for _, m in cheap], weights)[0]()
        if case.lane == "req" and case.kind != "bare DEALER with an empty frame":
            case.lane = g.rng.choice(LANES)
            if case.lane == "bare" and b"" in case.frames:
                case.lane = "dealer"  # a bare DEALER's empty frame ends its envelope: that case is its own kind
        cases.append(case)
    return cases


# -- checking one reply -------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    if b is GENERATED:
        return isinstance(a, str) and bool(a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def check_reply(case: Case, frames: list[bytes]) -> tuple[str, list[str]]:
    """(code, problems) for the frames a case's socket received; code is "ok" or the error code."""
    problems: list[str] = []
    if case.lane == "dealer":
        if not frames or frames[0] != b"":
            return "?", ["a DEALER reply without the empty delimiter"]
        frames = frames[1:]
    elif case.lane == "bare" and case.prefix:
        if frames[: len(case.prefix)] != case.prefix:
            return "?", ["a bare DEALER's envelope frames not echoed before the reply"]
        frames = frames[len(case.prefix):]
    if not frames:
        return "?", ["an empty reply"]
    try:
        header = json.loads(frames[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return "?", [f"reply header is not UTF-8 JSON: {exc}"]
    if not isinstance(header, dict) or not isinstance(header.get("ok"), bool) or header.get("v") != 1:
        return "?", [f"reply header is not a protocol reply: {str(header)[:200]}"]
    attachments = frames[1:]
    if header["ok"]:
        code = "ok"
        if case.check_op and header.get("op") != case.op:
            problems.append(f"ok reply for op {header.get('op')!r}, sent {case.op!r}")
        want = 1 if header.get("op") == "synthesize" else 0
        if len(attachments) != want:
            problems.append(f"ok {case.op} reply with {len(attachments)} binary frames")
        elif want and case.fmt in ("pcm_s16le", "f32le"):
            width = 2 if case.fmt == "pcm_s16le" else 4
            if len(attachments[0]) != width * header.get("samples", -1):
                problems.append("audio frame length does not match samples")
    else:
        error = header.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str) or not error.get("message"):
            return "?", [f"error reply without code and message: {str(header)[:200]}"]
        code = error["code"]
        if code not in STABLE_CODES:
            problems.append(f"error code {code!r}: {str(error.get('message'))[:300]}")
        if attachments:
            problems.append(f"error reply with {len(attachments)} binary frames")
        if len(error["message"]) > MAX_MESSAGE_CHARS:  # it is logged too: a peer's value is quoted short
            problems.append(f"error message of {len(error['message'])} characters: {error['message'][:60]!r}")
        if case.check_op and header.get("op") not in (case.op, None):
            problems.append(f"error reply for op {header.get('op')!r}, sent {case.op!r}")
    if case.codes is not None and code not in case.codes and not problems:
        problems.append(f"code {code!r}, expected one of {sorted(case.codes)}")
    if case.ids is not None and not any(_same(header.get("id"), want) for want in case.ids):
        shown = ["<generated>" if w is GENERATED else w for w in case.ids]
        got = header.get("id")
        types = sorted({"str" if w is GENERATED else type(w).__name__ for w in case.ids})
        if type(got).__name__ in types:
            problems.append(f"reply id is not the request's: {str(got)[:40]!r}, expected one of {str(shown)[:160]}")
        else:
            problems.append(f"reply id is {type(got).__name__}, expected {'/'.join(types)}: {str(got)[:40]!r}")
    return code, problems


# -- running ------------------------------------------------------------------------------------


@dataclass
class Tally:
    seed: int = 0
    sent: int = 0
    deserving: int = 0  # messages that deserve a reply
    answered: int = 0
    unanswered: int = 0  # deserved a reply, got none in time
    dropped_as_documented: int = 0  # no reply deserved, none came
    unexpected_replies: int = 0  # replies to messages that deserve none, and second replies
    model_runs: int = 0
    crashes: int = 0
    seconds: float = 0.0
    codes: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    #: (kind, what went wrong, shortened) -> how often: the failure summary.
    problem_kinds: Counter = field(default_factory=Counter)

    def problem(self, case: Case | None, text: str) -> None:
        self.problem_count += 1
        self.problem_kinds[(case.kind if case else "after the run", text.split(": ")[0][:80])] += 1
        if len(self.problems) < 200:
            self.problems.append(f"{case.describe() if case else 'after the run'}: {text[:300]}")

    def summary(self, examples: int = 20) -> str:
        groups = [f"{n:5d} x {kind}: {text}" for (kind, text), n in self.problem_kinds.most_common()]
        return "\n".join(["problems by kind:", *groups, f"first {examples} in full:", *self.problems[:examples]])

    def figures(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "sent": self.sent, "deserving_reply": self.deserving, "answered": self.answered,
            "unanswered": self.unanswered, "dropped_as_documented": self.dropped_as_documented,
            "unexpected_replies": self.unexpected_replies, "model_runs": self.model_runs, "crashes": self.crashes,
            "problems": self.problem_count, "seconds": round(self.seconds, 1), "codes": dict(sorted(self.codes.items())),
        }


class Fuzzer:
    """Sends cases one at a time, each on its lane's socket; a socket that missed a reply is replaced (Lazy Pirate)."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None, reply_timeout_s: float = 30.0,
                 model_timeout_s: float = 180.0, silence_s: float = 1.0, alive: Callable[[], bool] | None = None) -> None:
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.reply_timeout_s = reply_timeout_s
        self.model_timeout_s = model_timeout_s
        self.silence_s = silence_s
        self.alive = alive or (lambda: True)
        self.sockets: dict[str, zmq.Socket] = {}

    def _socket(self, lane: str) -> zmq.Socket:
        sock = self.sockets.get(lane)
        if sock is None:
            sock = self.context.socket(zmq.REQ if lane == "req" else zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self.sockets[lane] = sock
        return sock

    def _drop(self, lane: str) -> None:
        sock = self.sockets.pop(lane, None)
        if sock is not None:
            sock.close(linger=0)

    def close(self) -> None:
        for lane in list(self.sockets):
            self._drop(lane)

    def _extra_replies(self, tally: Tally, case: Case) -> None:
        sock = self.sockets.get(case.lane)
        while case.lane != "req" and sock is not None and sock.poll(0):
            sock.recv_multipart()
            tally.unexpected_replies += 1
            tally.problem(case, "a second reply")

    def run(self, cases: list[Case], seed: int = 0) -> Tally:
        tally = Tally(seed=seed)
        started = time.monotonic()
        silent_in_a_row = 0
        try:
            for case in cases:
                if not self.alive():
                    tally.crashes += 1
                    tally.problem(case, "the daemon is gone; the fuzz stops here")
                    break
                self._extra_replies(tally, case)  # a late second reply to the previous case on this lane
                sock = self._socket(case.lane)
                frames = case.frames if case.lane != "dealer" else [b"", *case.frames]
                sock.send_multipart(frames)
                tally.sent += 1
                tally.kinds[case.kind] += 1
                tally.deserving += case.reply
                tally.model_runs += case.runs_model
                wait = (self.model_timeout_s if case.runs_model else self.reply_timeout_s) if case.reply else self.silence_s
                if not sock.poll(int(wait * 1000)):
                    self._drop(case.lane)
                    if case.reply:
                        tally.unanswered += 1
                        tally.problem(case, f"no reply in {wait:.0f} s")
                        silent_in_a_row += 1
                        if silent_in_a_row >= 3 and not self.ping():
                            tally.problem(case, "the daemon stopped answering ping; the fuzz stops here")
                            break
                    else:
                        tally.dropped_as_documented += 1
                    continue
                silent_in_a_row = 0
                received = sock.recv_multipart()
                if not case.reply:
                    tally.unexpected_replies += 1
                    tally.problem(case, "a reply where the protocol documents none")
                    continue
                tally.answered += 1
                code, problems = check_reply(case, received)
                tally.codes[code] += 1
                for text in problems:
                    tally.problem(case, text)
                self._extra_replies(tally, case)
            # Anything still arriving now is a second reply.
            for lane, sock in list(self.sockets.items()):
                if lane != "req":
                    while sock.poll(int(self.silence_s * 1000)):
                        sock.recv_multipart()
                        tally.unexpected_replies += 1
                        tally.problem(None, f"lane {lane}: a second reply, after the run")
        finally:
            self.close()
            tally.seconds = time.monotonic() - started
        return tally

    def ping(self, timeout_s: float = 10.0) -> bool:
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        try:
            sock.send(json.dumps({"op": "ping", "id": "fuzz-probe"}).encode())
            return bool(sock.poll(int(timeout_s * 1000)))
        finally:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--model-budget", type=int, default=30)
    p.add_argument("--max-message-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--max-text-chars", type=int, default=2000)
    p.add_argument("--max-reference-bytes", type=int, default=8 * 1024 * 1024)
    args = p.parse_args(argv)
    limits = Limits(args.max_message_bytes, args.max_text_chars, args.max_reference_bytes)
    tally = Fuzzer(args.endpoint).run(generate(args.seed, args.count, limits, args.model_budget), args.seed)
    print(json.dumps(tally.figures(), indent=1))
    for line in tally.problems:
        print(line)
    return 1 if tally.problem_count else 0


if __name__ == "__main__":
    raise SystemExit(main())
