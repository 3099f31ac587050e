"""``ishowtts-edge``: run the daemon, talk to it, fetch a model.

Heavy imports (torch, the engine) happen only in the sub-commands that need them, so
``--version``, ``status`` and ``say`` start fast and work where torch is absent.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import __version__


def _endpoint(args: argparse.Namespace) -> str:
    if args.endpoint:
        return args.endpoint
    from .config import ConfigError, load_settings

    try:
        return load_settings(args.config).endpoint
    except ConfigError as exc:
        print(f"warning: {exc}; using the default endpoint", file=sys.stderr)
        from .client import DEFAULT_ENDPOINT

        return DEFAULT_ENDPOINT


#: Exit statuses for a daemon that cannot be reached (man/ishowtts-edge.1, EXIT STATUS).
EXIT_NOT_RUNNING = 69  # EX_UNAVAILABLE; `status` answers 3 (LSB "not running") instead
EXIT_NO_PERMISSION = 77  # EX_NOPERM
EXIT_BAD_ENDPOINT = 64  # EX_USAGE
_UNAVAILABLE_EXIT = {"permission_denied": EXIT_NO_PERMISSION, "bad_endpoint": EXIT_BAD_ENDPOINT}


def _client(args: argparse.Namespace):
    from .client import Client

    return Client(_endpoint(args), timeout_s=args.timeout, retries=1, check=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .daemon import AlreadyRunning, serve

    try:
        return serve(args.config)
    except ConfigError as exc:
        print(f"<3>{exc}", file=sys.stderr)
        return 78  # EX_CONFIG: systemd shows it as a configuration error
    except AlreadyRunning as exc:
        print(f"<3>{exc}", file=sys.stderr)
        return 75  # EX_TEMPFAIL


def cmd_say(args: argparse.Namespace) -> int:
    sampling = {"nfe_step": args.nfe, "speed": args.speed, "seed": args.seed}
    ref_audio = Path(args.ref_audio).read_bytes() if args.ref_audio else None
    if args.stream:
        return _say_stream(args, ref_audio, sampling)
    fmt = "wav" if args.output.endswith(".wav") or args.output == "-" else args.format
    with _client(args) as client:
        result = client.synthesize(
            args.text, args.voice, format=fmt, ref_audio=ref_audio, ref_text=args.ref_text, **sampling
        )
    if args.output == "-":
        sys.stdout.buffer.write(result.audio)
    else:
        Path(args.output).write_bytes(result.audio)
    h = result.header
    print(
        f"{args.output}: {h['audio_seconds']:.2f} s of audio at {h['sample_rate']} Hz, "
        f"synthesized in {h['synthesis_seconds']:.3f} s (RTF {h['rtf']:.3f})",
        file=sys.stderr,
    )
    return 0


def _say_stream(args: argparse.Namespace, ref_audio: bytes | None, sampling: dict) -> int:
    """Raw samples to stdout as they arrive: ``say --stream "..." | aplay -r 24000 -f S16_LE -c 1``."""
    fmt = args.format if args.format != "wav" else "pcm_s16le"
    out = sys.stdout.buffer
    with _client(args) as client:
        stream = client.stream(args.text, args.voice, format=fmt, ref_audio=ref_audio, ref_text=args.ref_text,
                               **sampling)
        try:
            for chunk in stream:
                out.write(chunk.audio)
                out.flush()
        except BrokenPipeError:  # the player went away: leaving closes the stream, the daemon cancels it
            stream.close()
            return 1
    end = stream.end or {}
    print(
        f"streamed {end.get('audio_seconds', 0):.2f} s of {fmt} at {stream.sample_rate} Hz; first audio after "
        f"{end.get('first_audio_seconds', 0):.3f} s, synthesized in {end.get('synthesis_seconds', 0):.3f} s",
        file=sys.stderr,
    )
    return 0


def cmd_voices(args: argparse.Namespace) -> int:
    with _client(args) as client:
        voices = client.voices()
    if args.json:
        print(json.dumps(voices, indent=2))
        return 0
    for v in voices:
        state = "" if v.get("available", True) else f"  UNAVAILABLE: {v.get('error', '')}"
        text = (v.get("ref_text") or "")[:60]
        seconds = v.get("ref_seconds")  # None for a voice whose files cannot be read
        length = f"{seconds:5.1f} s" if seconds is not None else "    - s"
        print(f"{v['id']:<20} {length}  {text}{state}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .client import ClientError, EndpointUnavailable

    try:
        with _client(args) as client:
            status = client.status()
    except ClientError as exc:
        if args.json:
            print(json.dumps({"state": "unreachable", "error": str(exc)}))
        else:
            print(f"ishowtts-edge: not reachable ({exc})")
        if isinstance(exc, EndpointUnavailable):
            return _UNAVAILABLE_EXIT.get(exc.code, 3)
        return 3  # LSB: program is not running
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        from .status import render

        print(render(status))
    return 0 if status.get("state") in ("ready", "degraded") else 1


def cmd_metrics(args: argparse.Namespace) -> int:
    """Print the exposition as node_exporter's textfile collector would serve it."""
    with _client(args) as client:
        sys.stdout.write(client.metrics())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.cli import run

    return run(args)


def cmd_model_fetch(args: argparse.Namespace) -> int:
    from .engine.fetch import fetch_model

    snippet = fetch_model(Path(args.dest))
    print(snippet)
    return 0


def _seconds(value: str) -> float:
    """A reply timeout: a positive, finite number of seconds (nan or inf would reach the poll as a crash)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return seconds


_COMMON_OPTIONS = (
    (("--config", "-c"), {"help": "TOML config (default: $ISHOWTTS_EDGE_CONFIG or /etc/ishowtts-edge/ishowtts-edge.toml)"}),
    (("--endpoint",), {"help": "daemon endpoint (default: from the config)"}),
    (("--timeout",), {"type": _seconds, "help": "seconds to wait for a reply (default: 60)"}),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ishowtts-edge", description="F5-TTS speech appliance for Jetson AGX Orin")
    p.add_argument("--version", action="version", version=f"ishowtts-edge {__version__}")
    # Accepted before or after the command (`serve --config X` is what people type); after it,
    # SUPPRESS leaves a value given before it in place.
    common = argparse.ArgumentParser(add_help=False)
    for flags, options in _COMMON_OPTIONS:
        p.add_argument(*flags, **options)
        common.add_argument(*flags, default=argparse.SUPPRESS, **options)
    p.set_defaults(timeout=60.0)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, parser=sub) -> argparse.ArgumentParser:
        return parser.add_parser(name, help=help, parents=[common])

    command("serve", "run the daemon in the foreground").set_defaults(func=cmd_serve)

    say = command("say", "synthesize TEXT to a file")
    say.add_argument("text")
    say.add_argument("--voice", "-v")
    say.add_argument("--output", "-o", default="out.wav", help="file to write, or - for stdout (WAV)")
    say.add_argument("--format", "-f", choices=("wav", "pcm_s16le", "f32le"), default="wav",
                     help="audio format (with --stream: pcm_s16le unless f32le is given)")
    say.add_argument("--stream", action="store_true",
                     help="write raw samples to stdout as they are made (pipe into aplay -r 24000 -f S16_LE -c 1)")
    say.add_argument("--ref-audio", help="clone this reference audio instead of a configured voice")
    say.add_argument("--ref-text", help="transcript of --ref-audio")
    say.add_argument("--nfe", type=int, help="sampling steps (default from the config)")
    say.add_argument("--speed", type=float)
    say.add_argument("--seed", type=int)
    say.set_defaults(func=cmd_say)

    st = command("status", "show the daemon's state, RTF, hardware and alerts")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    me = command("metrics", "print the daemon's Prometheus metrics (text exposition format)")
    me.set_defaults(func=cmd_metrics)

    vo = command("voices", "list voices")
    vo.add_argument("--json", action="store_true")
    vo.set_defaults(func=cmd_voices)

    from .bench.cli import add_arguments as add_bench_arguments

    bench = sub.add_parser("bench", help="measure this unit: the engine, the daemon and upstream f5-tts side by side")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    model = sub.add_parser("model", help="model files")
    msub = model.add_subparsers(dest="model_command", required=True)
    fetch = command("fetch", "download the released F5-TTS v1 Base checkpoint and Vocos (needs internet)", msub)
    fetch.add_argument("dest", help="directory to download into")
    fetch.set_defaults(func=cmd_model_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .client import ClientError, EndpointUnavailable

    try:
        return args.func(args)
    except EndpointUnavailable as exc:
        print(f"ishowtts-edge: {exc}", file=sys.stderr)
        return _UNAVAILABLE_EXIT.get(exc.code, EXIT_NOT_RUNNING)
    except ClientError as exc:
        print(f"ishowtts-edge: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ishowtts-edge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
