"""Daemon configuration: one TOML file plus ``ISHOWTTS_EDGE_*`` environment overrides.

Unknown keys are rejected (``extra="forbid"``) because a misspelt threshold that is
silently ignored is worse than a daemon that refuses to start.  For the same reason a
value in the file must have its key's TOML type (``port = "5555"`` is refused), while the
environment's values, all strings, are converted.  Every section is a plain pydantic model
so that modules can take just the part they need.

Environment overrides use ``__`` between levels, for example
``ISHOWTTS_EDGE_ENGINE__DEVICE=cpu`` or ``ISHOWTTS_EDGE_SERVER__MAX_TEXT_CHARS=500``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, field_validator, model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "ISHOWTTS_EDGE_"
#: Where the installed package keeps its conffile.
SYSTEM_CONFIG = Path("/etc/ishowtts-edge/ishowtts-edge.toml")

# Where the board's tools and files are, for the daemon; the keys below default to these.
# hwctl, the root program, keeps its own in hwctl.py and its root-owned hwctl.toml.
#: Looked for, never run, by the daemon: without both, the machine is not a Jetson.
NVPMODEL = Path("/usr/sbin/nvpmodel")
JETSON_CLOCKS = Path("/usr/bin/jetson_clocks")
#: hwctl's socket (ishowtts-edge-hwctl.socket).
HWCTL_SOCKET = Path("/run/ishowtts-edge-hwctl.sock")
#: Where jtop.service listens: jetson-stats' JTOP_PIPE, fixed in its client, so not a key.
JTOP_SOCKET = Path("/run/jtop.sock")
#: The tree the sysfs source reads: its sys/ and nvpmodel's files below (tests use a fake board's).
SYSFS_ROOT = Path("/")
#: nvpmodel's current mode and its mode table, relative to the sysfs root.
NVPMODEL_STATUS = Path("var/lib/nvpmodel/status")
NVPMODEL_CONF = Path("etc/nvpmodel.conf")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(_Section):
    """Directories.  systemd hands these over as RUNTIME_DIRECTORY, STATE_DIRECTORY, CACHE_DIRECTORY."""

    runtime_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("RUNTIME_DIRECTORY", "/run/ishowtts-edge").split(":")[0])
    )
    state_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("STATE_DIRECTORY", "/var/lib/ishowtts-edge").split(":")[0])
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("CACHE_DIRECTORY", "/var/cache/ishowtts-edge").split(":")[0])
    )


class ServerConfig(_Section):
    """The ZeroMQ request endpoint and the PUB endpoint for events."""

    #: Empty means ``ipc://<runtime_dir>/tts.sock``.
    endpoint: str = ""
    #: Empty means ``ipc://<runtime_dir>/events.sock``.
    events_endpoint: str = ""
    #: tcp:// endpoints must bind a loopback address unless this is set.
    allow_remote: bool = False
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=4096)
    max_text_chars: int = Field(default=2000, ge=1)
    max_reference_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: Synthesis requests allowed to wait behind the running one before ``busy`` is answered.
    #: Enough for a household of apps waiting one request each: they then take turns
    #: (round-robin) instead of racing their retries for a freed place.
    max_queue: int = Field(default=16, ge=0)
    #: Synthesis requests one client (one ZeroMQ socket) may have waiting or running.
    max_queue_per_client: int = Field(default=2, ge=1)
    #: Client connections at once; more are shut as they arrive.  Lowered at start when the
    #: descriptor limit (LimitNOFILE) leaves no room for them.
    max_connections: int = Field(default=512, ge=1, le=65536)
    #: At stop, how long the running synthesis may take to finish before it is cancelled.
    #: The unit's TimeoutStopSec must exceed it by at least 10 s (docs/operations.md).
    drain_timeout_s: float = Field(default=15.0, ge=0, le=3600)
    #: Seconds of audio a stream may run ahead of what its client acknowledged; beyond it the
    #: stream ends with slow_reader.  At least one chunk's audio (up to ~90 s at low speed).
    stream_window_s: float = Field(default=120.0, ge=10.0, le=3600)

    @field_validator("endpoint", "events_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        problem = endpoint_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _loopback_only(self) -> "ServerConfig":
        if self.allow_remote:
            return self
        for value in (self.endpoint, self.events_endpoint):
            if value.startswith("tcp://") and not is_loopback_tcp(value):
                raise ValueError(
                    f"{value} is not a loopback address; set server.allow_remote = true to expose it"
                )
        return self


#: sun_path holds 108 bytes with the terminating NUL (unix(7)); ZeroMQ needs the NUL.
MAX_IPC_PATH_BYTES = 107
_TCP = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]/;]*):(?P<port>[^:]*)")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def ipc_path_problem(path: str) -> str | None:
    """Why a unix socket path cannot be bound (None if it can)."""
    if not path:
        return "empty ipc path"
    if not path.startswith("/"):
        return f"ipc path {path!r} must be absolute"
    if "\0" in path:
        return "ipc path contains a NUL byte"
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_IPC_PATH_BYTES:
        return f"ipc path is {size} bytes; a unix socket path holds at most {MAX_IPC_PATH_BYTES}"
    return None


def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be bound or connected as written (None if it can).

    ZeroMQ would accept some of these and do something else: ``tcp://h:70000`` binds port
    4464 (the port wraps at 16 bits), ``ipc://`` fails only at bind time.
    """
    if endpoint.startswith("ipc://"):
        return ipc_path_problem(endpoint[len("ipc://"):])
    if not endpoint.startswith("tcp://"):
        return "must start with ipc:// or tcp://"
    match = _TCP.fullmatch(endpoint)
    if match is None:
        return "a tcp endpoint is tcp://HOST:PORT (an IPv6 address in brackets)"
    host, port = match.group("host"), match.group("port")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
    elif host != "*" and not _HOST_NAME.fullmatch(host):
        return f"tcp host {host!r} is not an address, a host name, an interface or *"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"tcp port {port!r} is not a number from 1 to 65535"
    return None


def is_loopback_tcp(endpoint: str) -> bool:
    host = urlparse(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class VoiceConfig(_Section):
    """A reference voice: either ``dir`` (holding ref.wav + ref.txt) or ``ref_audio`` + ``ref_text``."""

    dir: Path | None = None
    ref_audio: Path | None = None
    ref_text: str | None = None
    #: Language tag of what the voice speaks ("en", "de-DE"); the Wyoming bridge advertises voices
    #: by language (Home Assistant offers only voices that have one).  Unset: wyoming.default_language.
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")

    @model_validator(mode="after")
    def _one_form(self) -> "VoiceConfig":
        if self.dir is None and self.ref_audio is None:
            raise ValueError("give either dir or ref_audio (+ ref_text)")
        if self.dir is not None and self.ref_audio is not None:
            raise ValueError("give dir or ref_audio, not both")
        return self


class EngineConfig(_Section):
    """F5-TTS model, vocoder and sampling defaults."""

    #: auto = cuda when available, else cpu.
    device: Literal["auto", "cuda", "cpu"] = "auto"
    #: auto = float16 on CUDA, float32 on CPU.
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    #: Architecture: a name from f5-tts's configs (F5TTS_v1_Base, F5TTS_Base, ...) or the path of a
    #: yaml in that format.  Not used by the demo checkpoint, which carries its own model.yaml.
    model: str = "F5TTS_v1_Base"
    #: model_*.safetensors or .pt; empty = the generated, untrained demo checkpoint (noise, not speech).
    checkpoint: Path | None = None
    #: vocab.txt; empty = the one next to the checkpoint, else f5-tts's Emilia vocab.
    vocab: Path | None = None
    #: Local Vocos directory with config.yaml + pytorch_model.bin; empty = "vocos/" next to the
    #: checkpoint (fetch_model's layout).  The demo checkpoint brings its own.
    vocoder_dir: Path | None = None
    compile: bool = True
    #: "default" measured best overall (docs/benchmarks.md).  reduce-overhead and max-autotune
    #: bring inductor's own CUDA graphs, which replace ours (cuda_graphs is then ignored).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    #: inductor generates kernels (the CUDA path).  eager/aot_eager only trace with dynamo and are for
    #: testing: with them the transformer is "compiled" on CPU too, so tests can check shapes/recompiles.
    compile_backend: Literal["inductor", "eager", "aot_eager"] = "inductor"
    #: false = compile at the first requests instead: they are slow, and telemetry then samples during
    #: the compile, which led to slower kernels on an H200 (docs/benchmarks.md).
    warmup: bool = True
    nfe_step: int = Field(default=7, ge=1, le=64)
    cfg_strength: float = Field(default=2.0, ge=0.0, le=10.0)
    sway_sampling_coef: float = Field(default=-1.0, ge=-2.0, le=2.0)
    speed: float = Field(default=1.0, ge=0.3, le=3.0)
    cross_fade_s: float = Field(default=0.15, ge=0.0, le=1.0)
    #: The least speech in a stream's short first chunk (chunk_plan short_first); the chunk
    #: takes the words that fit the length bucket its pass runs in anyway (docs/protocol.md).
    stream_first_chunk_s: float = Field(default=1.0, ge=0.2, le=10.0)
    #: A text that one chunk holds is cut for a stream only when its speech is at least this
    #: long: the extra pass over the reference costs more than the earlier start gains below it.
    stream_split_min_s: float = Field(default=8.0, ge=0.0, le=60.0)
    target_rms: float = Field(default=0.1, gt=0.0, le=1.0)
    #: Reference audio longer than this is clipped at a silence.
    max_ref_seconds: float = Field(default=12.0, ge=1.0, le=30.0)
    #: Request-supplied reference voices kept prepared in memory.
    adhoc_voice_cache: int = Field(default=16, ge=0)
    #: Total mel-frame lengths (reference + generated, 93.75 frames/s) that sequences are padded up
    #: to, so a compiled transformer sees only these shapes; warm-up compiles each one.  Longer
    #: sequences run eager at their exact length.  Padding is exact only for models with
    #: text_mask_padding (F5TTS_v1_*); for others it is switched off.
    #: CUDA only, with compile and buckets: capture each bucket's whole sampling loop at the
    #: default nfe_step as one CUDA graph (engine/graphs.py); other step counts run per step.
    cuda_graphs: bool = True
    #: Step counts captured as CUDA graphs besides nfe_step (32 = upstream's default NFE);
    #: requests at other step counts run step by step on the same compiled kernels.
    cuda_graph_nfe: list[int] = Field(default_factory=lambda: [32])
    #: Compile once with a symbolic sequence length for all buckets (warm-up ~1 compile);
    #: false = one specialised compile per bucket (warm-up grows with the bucket count).
    compile_dynamic: bool = True
    #: What torch.compile compiles.  "blocks": each DiT block, all sharing one compiled graph
    #: (the 22 identical blocks are traced and lowered once: a much shorter cold warm-up); the
    #: few ops around them run eager inside the CUDA graph.  "model": the whole guided forward
    #: as one graph (fusion across block boundaries, a compile ~22 blocks long).
    compile_scope: Literal["blocks", "model"] = "blocks"
    length_buckets: list[int] = Field(default_factory=lambda: list(range(256, 2561, 128)))
    #: The attention kernel for padded (bucketed) sequences.  sdpa: PyTorch's SDPA with an additive
    #: key mask (its memory-efficient kernel).  flash: FlashAttention's variable-length kernel, no
    #: mask tensor (sm80+ GPU, fp16/bf16, a PyTorch built with it); checked at load time, and an
    #: unusable flash falls back to sdpa with a warning.  Measured equal on an H200
    #: (docs/benchmarks.md), so sdpa stays the default; flash is there to measure on an Orin.
    attention: Literal["sdpa", "flash"] = "sdpa"
    #: auto = pad to buckets only when the transformer is compiled (CUDA); always/never for testing
    #: and measurements.
    pad_to_buckets: Literal["auto", "always", "never"] = "auto"
    #: Testing/demo only: a (fake) devfreq directory; after every ODE step the engine reads its
    #: cur_freq and max_freq and sleeps step_time * (max/cur - 1), so synthesis slows in proportion
    #: to a lowered GPU clock as it would on the real board.
    emulate_clock_devfreq: Path | None = None

    @field_validator("length_buckets")
    @classmethod
    def _positive_buckets(cls, value: list[int]) -> list[int]:
        if any(b < 16 or b > 65536 for b in value):
            raise ValueError("every bucket must be between 16 and 65536 frames")
        return sorted(set(value))


class HardwareConfig(_Section):
    """Power mode and clocks, set through hwctl, the root program (docs/security.md).

    hwctl runs the tools with paths and limits from its own root-owned
    /etc/ishowtts-edge/hwctl.toml; nothing here can make it run anything else.
    """

    enabled: bool = True
    #: Power mode by name (preferred: ids differ between boards) or id.  hwctl only
    #: accepts modes listed in hwctl.toml's power_modes.
    power_mode: str | int = "MAXN"
    #: Preflight asks hwctl to apply power_mode + jetson_clocks when they differ.
    apply_at_start: bool = True
    #: At stop, ask hwctl to restore the clocks stored before the first apply.
    restore_at_stop: bool = False
    #: Unix socket of hwctl (ishowtts-edge-hwctl.socket).
    hwctl_socket: Path = HWCTL_SOCKET

    @field_validator("hwctl_socket")
    @classmethod
    def _socket_path(cls, value: Path) -> Path:
        problem = ipc_path_problem(str(value))
        if problem:
            raise ValueError(problem.replace("ipc path", "socket path"))
        return value
    #: Only checked for existence, to tell "not a Jetson" (disabled) from "hwctl not installed" (degraded).
    nvpmodel: Path = NVPMODEL
    #: Kept for symmetry with nvpmodel: its absence also means "not a Jetson".
    jetson_clocks: Path = JETSON_CLOCKS
    #: How long to wait for one hwctl reply; an apply runs up to seven tool calls.
    hwctl_timeout_s: float = Field(default=120.0, gt=0, le=900)


class TelemetryConfig(_Section):
    """Clocks, thermals and power sampling (ishowtts_edge.telemetry)."""

    interval_s: float = Field(default=1.0, ge=0.05, le=60)
    #: Tried in order; the first that works is used, the next on failure.
    sources: list[Literal["jtop", "sysfs", "nvml"]] = ["jtop", "sysfs", "nvml"]
    #: Root of the sysfs tree (tests point this at a fake board).
    sysfs_root: Path = SYSFS_ROOT
    #: Seconds of samples kept for nearest(); covers a long synthesis plus slack.
    buffer_s: float = Field(default=300.0, ge=5, le=3600)
    #: A synthesis is paired with the sample nearest its middle only when that sample lies within
    #: this many seconds of it; a farther one does not describe that moment, and the synthesis is
    #: monitored without telemetry.  Keep it at least interval_s / 2, or some always are.
    nearest_within_s: float = Field(default=5.0, gt=0, le=3600)
    #: latest() returns None once the newest sample is this old: stale data is not shown as live.
    stale_after_s: float = Field(default=10.0, gt=0)
    #: A failed source is retried after this many seconds, doubling up to reconnect_max_s.
    reconnect_min_s: float = Field(default=2.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    #: Hot, in deg C, for every judgement of heat (docs/monitoring.md, "From [telemetry]"): the sampler
    #: tags "thermal" when tj is at or above it while the GPU runs below its minimum, and the
    #: monitor counts the hottest zone at or above it, with a lowered GPU clock, as thermal
    #: throttling.  Orin's software throttling starts in the mid 90s; this flags the approach.
    hot_tj_c: float = Field(default=90.0, gt=0, le=150)
    #: The board's sysfs directories are listed again this often (0: never), so that a rail or
    #: thermal zone whose driver loaded after the daemon started is sampled; between rescans a
    #: sample reads the paths it knows (a vanished one still triggers a rescan at once).
    rescan_interval_s: float = Field(default=300.0, ge=0, le=86400)

    @model_validator(mode="after")
    def _rescan_not_every_sample(self) -> "TelemetryConfig":
        if 0 < self.rescan_interval_s < self.interval_s:
            raise ValueError("rescan_interval_s must be 0 (never) or at least interval_s")
        return self


class MonitorConfig(_Section):
    """RTF drift detection and remediation.  Defaults are justified in docs/monitoring.md."""

    enabled: bool = True
    #: Rolling window: at most this many syntheses ...
    window_count: int = Field(default=50, ge=5, le=10000)
    #: ... and none older than this.
    window_age_s: float = Field(default=600.0, gt=0)
    #: Syntheses needed in the window before any RTF alert can be raised.
    min_samples: int = Field(default=8, ge=3)
    #: The most recent syntheses whose median catches a sudden slowdown before the window median moves.
    recent_count: int = Field(default=8, ge=3)
    #: Syntheses, taken while clocks are locked and no alert is active, from which the baseline is learned.
    baseline_samples: int = Field(default=30, ge=3)
    #: Request-to-request variation (robust coefficient of variation from successive differences)
    #: of measured/expected time that raises an alert.
    cv_threshold: float = Field(default=0.06, gt=0)
    #: ... and that makes it an error rather than a warning.
    cv_error_threshold: float = Field(default=0.15, gt=0)
    #: Median slowdown (measured/expected - 1) that raises an alert.
    slowdown_threshold: float = Field(default=0.15, gt=0)
    #: ... and that makes it an error rather than a warning.
    slowdown_error_threshold: float = Field(default=0.40, gt=0)
    #: Used instead of slowdown_threshold when the daemon does not lock clocks (hardware
    #: management off): clocks left to the governor vary RTF by +-16 % on their own.
    unmanaged_slowdown_threshold: float = Field(default=0.30, gt=0)
    #: Consecutive syntheses past a threshold before an alert is raised.
    raise_after: int = Field(default=3, ge=1)
    #: An alert clears when both figures fall below threshold * this factor ...
    clear_ratio: float = Field(default=0.6, gt=0, lt=1)
    #: ... in this many consecutive syntheses.
    clear_after: int = Field(default=5, ge=1)
    #: GPU clock below its locked maximum by more than this fraction counts as drift.
    clock_drop_threshold: float = Field(default=0.05, gt=0, lt=1)
    #: Consecutive telemetry samples that confirm (or clear) clocks_off / power_mode_changed seen directly.
    telemetry_confirm: int = Field(default=5, ge=1)
    #: Raised/cleared alerts kept for ``ishowtts-edge status``.
    history_size: int = Field(default=50, ge=1, le=1000)
    #: On clock drift, clocks off or a changed power mode, ask hwctl to re-apply mode and clocks.
    remediate: bool = True
    remediate_min_interval_s: float = Field(default=120.0, ge=0)
    #: Attempts per alert before giving up (the alert stays active).
    remediate_max_attempts: int = Field(default=3, ge=1)
    #: After re-applying, the alert must clear within this time or the attempt counts as not recovered.
    remediate_verify_s: float = Field(default=180.0, gt=0)

    @model_validator(mode="after")
    def _error_above_warning(self) -> "MonitorConfig":
        if self.cv_error_threshold < self.cv_threshold:
            raise ValueError("cv_error_threshold must be >= cv_threshold")
        if self.slowdown_error_threshold < self.slowdown_threshold:
            raise ValueError("slowdown_error_threshold must be >= slowdown_threshold")
        return self


class MetricsConfig(_Section):
    """Prometheus metrics (ishowtts_edge.metrics): a textfile for node_exporter, and the ``metrics`` op.

    The daemon opens no network socket for them: node_exporter's textfile collector
    serves the file it writes.
    """

    #: Write ``ishowtts-edge.prom`` (metrics.textfile_name) into textfile_dir every interval_s
    #: (false: only the ``metrics`` op).
    textfile: bool = True
    #: node_exporter's --collector.textfile.directory; the default is the Debian
    #: prometheus-node-exporter package's.  Not created: a missing directory means no node_exporter.
    textfile_dir: Path = Path("/var/lib/prometheus/node-exporter")
    interval_s: float = Field(default=5.0, ge=0.1, le=300)
    #: This daemon's name among several on one host: its file is ishowtts-edge-NAME.prom and its series
    #: carry daemon="NAME".  Empty: derived from the endpoint, and none at the packaged endpoint.
    name: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,64}$")

    @field_validator("textfile_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # "" is Path("."): the daemon would write into whatever its working directory is.
        if not value.is_absolute() or "\0" in str(value):
            raise ValueError(f"must be an absolute directory path, not {str(value)!r}")
        return value


class WyomingConfig(_Section):
    """The Wyoming bridge (ishowtts-edge-wyoming, docs/home-assistant.md); the daemon itself ignores it."""

    #: Address the bridge listens on; a non-loopback one only with allow_remote (as server.allow_remote).
    host: str = "127.0.0.1"
    #: 10200 is Wyoming's conventional TTS port; 0 = any free port (tests read it from the log).
    port: int = Field(default=10200, ge=0, le=65535)
    allow_remote: bool = False
    #: Language advertised for a voice whose [voices.*] entry sets none.
    default_language: str = Field(default="en", pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
    #: Fixed seed for every request to the daemon (the same text then always sounds the same); unset = random.
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    #: Connections served at once; more are answered with an error and closed.
    max_connections: int = Field(default=8, ge=1, le=256)
    #: Seconds the bridge waits for the daemon's next piece of audio before it reports a timeout.
    synthesis_timeout_s: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("host")
    @classmethod
    def _one_host(cls, value: str) -> str:
        # urlparse drops tabs and newlines, so "127.0.0.1\n" passed the loopback check and then failed to bind.
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(f"must be a host name or address without spaces or control characters, not {value!r}")
        return value

    @model_validator(mode="after")
    def _loopback_only(self) -> "WyomingConfig":
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not self.allow_remote and not is_loopback_tcp(f"tcp://{host}:{self.port}"):
            raise ValueError(f"{self.host} is not a loopback address; set wyoming.allow_remote = true to expose it")
        return self


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    paths: PathsConfig = Field(default_factory=PathsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    default_voice: str = "demo"
    voices: dict[str, VoiceConfig] = Field(default_factory=dict)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    wyoming: WyomingConfig = Field(default_factory=WyomingConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    #: The file this was read from (None: defaults and environment only).
    source_file: Path | None = Field(default=None, exclude=True)

    #: Old key -> new key ("section.key"): still accepted in a file or the environment, with a
    #: warning at start (deprecated_keys); giving both is refused.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "hardware.helper_socket": "hardware.hwctl_socket",
        "hardware.helper_timeout_s": "hardware.hwctl_timeout_s",
        # One owner for "hot": the sampler's throttle tags and the monitor's causes use one figure.
        "monitor.hot_c": "telemetry.hot_tj_c",
    }

    #: The file's source (load_settings builds it, so that it can read the file's type errors).
    _toml_source: ClassVar[PydanticBaseSettingsSource | None] = None
    #: (old, new) names of the keys this configuration gave under an old name.  Kept off the
    #: sections, so that a SIGHUP reload compares what the settings are, not how they were spelt.
    _deprecated_keys: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _accept_renamed_keys(cls, data: Any, handler: Any) -> "Settings":
        renamed: list[tuple[str, str]] = []
        if isinstance(data, dict):
            data = dict(data)
            for old, new in cls.RENAMED_KEYS.items():
                (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
                source = data.get(old_section)
                if not isinstance(source, dict) or old_key not in source:
                    continue
                source = dict(source)
                value = source.pop(old_key)
                data[old_section] = source
                target = data.get(new_section)  # after the line above: a key renamed in place stays in one section
                target = dict(target.model_dump(exclude_unset=True) if isinstance(target, BaseModel) else target or {})
                if new_key in target:
                    raise ValueError(f"{old} is the old name of {new}: give only {new_key}")
                target[new_key] = value
                data[new_section] = target
                renamed.append((old, new))
        settings = handler(data)
        if renamed:  # not on assignment (validate_assignment runs this again, without the old names)
            settings._deprecated_keys = renamed
        return settings

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_source is not None:
            sources.append(cls._toml_source)
        return tuple(sources)

    def deprecated_keys(self) -> list[tuple[str, str]]:
        """(old, new) names of the keys this configuration gave under an old name."""
        return list(self._deprecated_keys)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint or f"ipc://{self.paths.runtime_dir}/tts.sock"

    @property
    def events_endpoint(self) -> str:
        return self.server.events_endpoint or f"ipc://{self.paths.runtime_dir}/events.sock"


class _StrictTomlSource(TomlConfigSettingsSource):
    """The file's values, each checked for its TOML type before the lax merge with the environment.

    TOML has real types, so ``port = "5555"``, ``max_queue = 2.0`` or ``compile = "yes"`` is a
    mistake in a file someone wrote by hand, which pydantic's lax mode would quietly convert.
    Lax mode stays for the environment, whose values are all strings.  Only the types are
    checked here (strictly, as JSON: a string is still a path); ranges, patterns and the
    checks across keys are the merged validation's.
    """

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        super().__init__(settings_cls, toml_file=toml_file)
        #: As ValidationError.errors() gives them: reported with the merged validation's.
        self.type_errors = _toml_type_errors(self.toml_data, ())


_TOML_KINDS = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "table"}


def _toml_type_errors(data: dict[str, Any], loc: tuple[str, ...], model: type[BaseModel] | None = None
                      ) -> list[dict[str, Any]]:
    """The keys of ``data`` (the file's table at ``loc``) whose value has a type ``model`` does not take."""
    model = model or Settings
    errors: list[dict[str, Any]] = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        renamed = Settings.RENAMED_KEYS.get(".".join((*loc, key)))
        if field is None and renamed is not None:
            section, name = renamed.split(".")
            field = Settings.model_fields[section].annotation.model_fields.get(name)  # type: ignore[union-attr]
        if field is None:
            continue  # an unknown key: the merged validation names it
        where = (*loc, key)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if isinstance(value, dict):
                errors += _toml_type_errors(value, where, annotation)
            continue
        item = typing.get_args(annotation)[1] if typing.get_origin(annotation) is dict else None
        if isinstance(item, type) and issubclass(item, BaseModel) and isinstance(value, dict):
            for name, entry in value.items():
                if isinstance(entry, dict):
                    errors += _toml_type_errors(entry, (*where, name), item)
            continue
        try:
            given = json.dumps(value)
        except (TypeError, ValueError):
            continue  # a TOML date or time: no key takes one, and the merged validation says so
        try:
            TypeAdapter(annotation).validate_json(given, strict=True)
        except ValidationError as exc:
            by_loc: dict[tuple[Any, ...], list[Any]] = {}
            for error in exc.errors():
                if not error["type"].endswith("_type"):
                    continue  # a wrong value (not one of a Literal's), not a wrong type: lax mode refuses it too
                # Keep list indices; drop a union's member names ("str", "int").
                inner = tuple(part for part in error["loc"] if isinstance(part, int))
                by_loc.setdefault(inner, []).append(error)
            for inner, found in by_loc.items():
                kind = _TOML_KINDS.get(type(found[0]["input"]), type(found[0]["input"]).__name__)
                message = "; ".join(dict.fromkeys(e["msg"] for e in found)) + f" (the file gives a TOML {kind})"
                errors.append({"type": "toml_type", "loc": (*where, *inner), "msg": message})
    return errors


class ConfigError(Exception):
    """An invalid configuration: the message names the file, the key and the reason."""


def default_config_path() -> Path | None:
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (or the default location) and the environment; raise ConfigError if invalid."""
    toml_path = Path(path) if path is not None else default_config_path()
    where = str(toml_path) if toml_path is not None else "(defaults)"

    type_errors: list[dict[str, Any]] = []
    try:
        if toml_path is not None and not toml_path.is_file():
            raise ConfigError(f"config file {toml_path}: not found")
        source = _StrictTomlSource(Settings, toml_path) if toml_path is not None else None
        type_errors = source.type_errors if source is not None else []

        class _Loaded(Settings):
            _toml_source = source

        loaded = _Loaded(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(where, type_errors, exc.errors())) from None
    except ValueError as exc:  # TOML syntax errors arrive as tomllib.TOMLDecodeError (a ValueError)
        raise ConfigError(f"config file {where}: {exc}") from None
    except OSError as exc:  # unreadable (an editor's or `install -m600`'s mode): a config error, not a crash on SIGHUP
        raise ConfigError(f"config file {where}: cannot read it: {exc.strerror or exc}") from None
    if type_errors:  # lax validation took them (the string "5555" as the port 5555): the file is wrong all the same
        raise ConfigError(_describe(where, type_errors, []))
    settings = Settings.model_construct(**{name: getattr(loaded, name) for name in Settings.model_fields})
    settings._deprecated_keys = loaded.deprecated_keys()
    for key, given, effective in (
        ("server.endpoint", settings.server.endpoint, settings.endpoint),
        ("server.events_endpoint", settings.server.events_endpoint, settings.events_endpoint),
    ):
        problem = None if given else endpoint_problem(effective)
        if problem:  # the default endpoint, under a runtime directory too long for a socket path
            raise ConfigError(
                f"config file {where}: 1 invalid setting(s)\n  paths.runtime_dir: {problem} "
                f"(the default {key} is {effective}); choose a shorter directory or set {key}"
            )
    settings.source_file = toml_path
    return settings


def _describe(where: str, type_errors: list[dict[str, Any]], errors: list[Any]) -> str:
    """One line per invalid key: the file's wrong types first, then what else the merged validation found
    (not again for a key whose type is wrong already)."""
    wrong = [e["loc"] for e in type_errors]
    errors = [*type_errors, *(e for e in errors if not any(tuple(e["loc"][: len(w)]) == w for w in wrong))]
    lines = [f"config file {where}: {len(errors)} invalid setting(s)"]
    for error in errors:
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        reason = error["msg"]
        if error["type"] == "extra_forbidden":
            reason = "unknown key"
        lines.append(f"  {key}: {reason}")
    return "\n".join(lines)
