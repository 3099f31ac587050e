"""hwctl (``ishowtts-edge-hwctl``): the only ishowtts-edge code that runs as root.

It does three fixed things to the Jetson's power mode and clocks (query, apply,
restore) and nothing else, so that the TTS daemon can stay unprivileged under
NoNewPrivileges.  Stdlib only (plus tomli on Python 3.10) so it is small to audit
and starts fast; it must never import torch, pydantic or numpy.  It imports nothing of
the package either, so this one file is all that runs as root, and the daemon imports
nothing of it: the daemon's side, :mod:`ishowtts_edge.hwctl_client`, shares only the
protocol below.

Ways in (docs/security.md explains the choice):

* ``ishowtts-edge-hwctl query|apply|restore`` -- direct CLI for root (ExecStartPre=+, people).
* ``ishowtts-edge-hwctl --stdio`` -- one connection on fd 0, as systemd's
  ``Accept=yes`` socket unit hands it over.
* ``ishowtts-edge-hwctl --listen PATH`` -- the same protocol on a unix socket, for
  tests and hosts without systemd.

Protocol: the client sends ONE JSON object on one line (at most
:data:`MAX_REQUEST_BYTES`), ``{"action": "query"|"apply"|"restore"}``, ``apply``
optionally with ``"power_mode": NAME|ID``; hwctl answers ONE JSON line,
``{"ok": true, "action": ..., "result": {...}}`` or
``{"ok": false, "action": ..., "error": {"kind": ..., "message": ..., "details"?: {...}}}``.
The peer is identified by SO_PEERCRED, which the kernel fills in at connect time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import json
import logging
import os
import pwd
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - JetPack 6 ships 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/ishowtts-edge/hwctl.toml")
ACTIONS = ("query", "apply", "restore")
MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT_S = 5.0
#: Names hwctl will pass to nvpmodel: what nvpmodel.conf uses, nothing shell-like.
_MODE_NAME = re.compile(r"[A-Za-z0-9_]{1,40}\Z")  # \Z: "$" would let a final newline through
#: Store file for `jetson_clocks --store/--restore`, plus the boot it was taken in.
STORE_FILE = "l4t_dfs.conf"
STORE_BOOT_FILE = "l4t_dfs.boot_id"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


# --------------------------------------------------------------------------- errors


class HwctlError(Exception):
    """A failure with a machine-readable ``kind`` that travels to the client unchanged
    (where :class:`ishowtts_edge.hwctl_client.HwctlCallError` carries it).

    kinds: bad_request, refused, config, not_root, tool_missing, tool_failed,
    tool_timeout, unparseable, unknown_mode, no_store, verify_failed, internal.
    """

    def __init__(self, kind: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.details:
            data["details"] = self.details
        return data


# --------------------------------------------------------------------------- config


@dataclass
class HwctlSettings:
    """hwctl's own, root-owned settings (hwctl.toml).  Nothing here comes from the daemon."""

    nvpmodel: Path = Path("/usr/sbin/nvpmodel")
    jetson_clocks: Path = Path("/usr/bin/jetson_clocks")
    timeout_s: float = 20.0
    state_dir: Path = Path("/var/lib/ishowtts-edge-hwctl")
    #: Peers allowed besides root: user names/uids and group names/gids (SO_PEERCRED's gid).
    allowed_users: list[str | int] = field(default_factory=lambda: ["ishowtts-edge"])
    allowed_groups: list[str | int] = field(default_factory=lambda: ["ishowtts-edge"])
    #: Power modes an ``apply`` request may ask for, by name; the first is the default.
    power_modes: list[str] = field(default_factory=lambda: ["MAXN"])
    source: str = "(defaults)"

    _KEYS = ("nvpmodel", "jetson_clocks", "timeout_s", "state_dir", "allowed_users", "allowed_groups", "power_modes")

    @classmethod
    def load(cls, path: Path | None, *, require_root_owned: bool | None = None) -> "HwctlSettings":
        """Read ``path`` (TOML).  A missing default file means defaults; a bad one is an error.

        A file anyone but root can write would let that someone pick the binaries root
        runs, so as root such a file is refused.
        """
        settings = cls()
        if path is None:
            return settings
        try:
            st = path.stat()
        except FileNotFoundError:
            if path == DEFAULT_CONFIG:
                return settings
            raise HwctlError("config", f"hwctl config {path}: not found") from None
        if require_root_owned is None:
            require_root_owned = os.geteuid() == 0
        if require_root_owned and (st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            raise HwctlError("config", f"hwctl config {path}: must be owned by root and not group/world-writable")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise HwctlError("config", f"hwctl config {path}: {exc}") from None
        unknown = sorted(set(data) - set(cls._KEYS))
        if unknown:
            raise HwctlError("config", f"hwctl config {path}: unknown key(s) {', '.join(unknown)}")
        try:
            for key in ("nvpmodel", "jetson_clocks", "state_dir"):
                if key in data:
                    value = Path(_typed(data[key], str, key))
                    if not value.is_absolute():
                        raise ValueError(f"{key} must be an absolute path")
                    setattr(settings, key, value)
            if "timeout_s" in data:
                timeout = data["timeout_s"]
                if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
                    raise ValueError("timeout_s must be a number in (0, 600]")
                settings.timeout_s = float(timeout)
            for key in ("allowed_users", "allowed_groups"):
                if key in data:
                    items = _typed(data[key], list, key)
                    if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in items):
                        raise ValueError(f"{key} must list names or numeric ids")
                    setattr(settings, key, list(items))
            if "power_modes" in data:
                modes = _typed(data["power_modes"], list, "power_modes")
                if not modes or not all(isinstance(m, str) and _MODE_NAME.match(m) for m in modes):
                    raise ValueError("power_modes must be a non-empty list of mode names like MAXN")
                settings.power_modes = list(modes)
        except ValueError as exc:
            raise HwctlError("config", f"hwctl config {path}: {exc}") from None
        settings.source = str(path)
        return settings

    def allowed_ids(self) -> tuple[set[int], set[int]]:
        """Resolve names now: a user that does not exist yet (package not configured) matches nobody."""
        uids = {0}
        gids: set[int] = set()
        for user in self.allowed_users:
            if isinstance(user, int):
                uids.add(user)
            else:
                try:
                    uids.add(pwd.getpwnam(user).pw_uid)
                except KeyError:
                    log.debug("allowed user %s does not exist", user)
        for group in self.allowed_groups:
            if isinstance(group, int):
                gids.add(group)
            else:
                try:
                    gids.add(grp.getgrnam(group).gr_gid)
                except KeyError:
                    log.debug("allowed group %s does not exist", group)
        return uids, gids


def _typed(value: Any, kind: type, key: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{key} must be a {kind.__name__}")
    return value


# --------------------------------------------------------------------------- running tools


@dataclass
class ToolOutput:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def run_tool(argv: list[str], timeout_s: float, stdin_text: str | None = None) -> ToolOutput:
    """Run a fixed argv (no shell) with a timeout, in its own process group.

    stdin is either the given text (then closed) or /dev/null, so a prompt can never
    wait for a human.  On timeout the whole group is killed: nvpmodel and
    jetson_clocks spawn children that would otherwise keep the pipes open.
    """
    tool = Path(argv[0])
    name = tool.name
    if not tool.is_file():
        raise HwctlError("tool_missing", f"{name} not found at {tool} (not a Jetson, or set its path in hwctl.toml)")
    if not os.access(tool, os.X_OK):
        raise HwctlError("tool_missing", f"{name} at {tool} is not executable")
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env.setdefault("HOME", "/root")  # jetson_clocks keeps its default files in $HOME; systemd sets none
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise HwctlError("tool_missing", f"cannot run {tool}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(stdin_text.encode() if stdin_text is not None else None, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
        raise HwctlError(
            "tool_timeout",
            f"{' '.join(argv)} did not finish within {timeout_s:g} s (killed)",
            {"output": _tail((out or b"").decode(errors="replace") + (err or b"").decode(errors="replace"))},
        ) from None
    result = ToolOutput(argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    if "Please run as root" in result.text or "as a root user" in result.text:
        raise HwctlError("not_root", f"{name} refused: it must run as root ({_tail(result.text, 2)})")
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _check_exit(result: ToolOutput) -> None:
    if result.returncode != 0:
        raise HwctlError(
            "tool_failed",
            f"{' '.join(result.argv)} exited with {result.returncode}: {_tail(result.text) or '(no output)'}",
        )


def _error_lines(text: str) -> list[str]:
    """jetson_clocks reports most failures on stdout and still exits 0."""
    return [line.strip() for line in text.splitlines() if re.match(r"\s*(Error|NVPM ERROR)", line)]


# --------------------------------------------------------------------------- parsers

_MODE_LINE = re.compile(r"NV Power Mode:\s*(?P<name>\w+)")
_POWER_MODEL = re.compile(r"POWER_MODEL:\s*ID=(?P<id>\d+)\s+NAME=(?P<name>\w+)")
_PM_DEFAULT = re.compile(r"PM_CONFIG:\s*DEFAULT=(?P<name>\w+)\((?P<id>\d+)\)")
_KV = re.compile(r"(\w+)=(\S+)")
#: The header's CPU sets: ``Online CPUs: 0-11`` (R35/R36) or ``Online CPUs: 0-7, Offline CPUs: 8-11`` (R39).
_ONLINE_HEADER = re.compile(r"Online CPUs:\s*(?P<online>[\d,\-\s]*?)\s*(?:,\s*Offline CPUs:.*)?$")


def _cpu_set(text: str) -> set[int] | None:
    """``0-3,8-11`` as a set; None if it is not such a list."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            return None
        cpus.update(range(int(first), int(last if dash else first) + 1))
    return cpus


def parse_nvpmodel_query(text: str) -> dict[str, Any]:
    """``nvpmodel -q``: warnings, then ``NV Power Mode: NAME`` and the id on the next line."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _MODE_LINE.search(line)
        if match:
            following = lines[index + 1].strip() if index + 1 < len(lines) else ""
            if not following.isdigit():
                break
            return {"id": int(following), "name": match.group("name")}
    raise HwctlError("unparseable", f"nvpmodel -q: no 'NV Power Mode' line followed by an id in: {_tail(text)}")


def parse_nvpmodel_modes(text: str) -> dict[str, Any]:
    """``nvpmodel -p --verbose``: the board's mode list (ids differ between boards)."""
    modes = [{"id": int(m.group("id")), "name": m.group("name")} for m in _POWER_MODEL.finditer(text)]
    if not modes:
        raise HwctlError("unparseable", f"nvpmodel -p --verbose: no POWER_MODEL lines in: {_tail(text)}")
    default = _PM_DEFAULT.search(text)
    return {
        "modes": modes,
        "default": {"id": int(default.group("id")), "name": default.group("name")} if default else None,
    }


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def parse_clocks_show(text: str) -> dict[str, Any]:
    """``jetson_clocks --show`` (JetPack 5, 6 and 7 layouts).  CPU values are kHz, the rest Hz.

    R39 (JetPack 7) prints no ``Online=`` on the cpu lines: the header's online set says it.
    """
    cpus: list[dict[str, Any]] = []
    header_online: set[int] | None = None
    gpu: dict[str, Any] | None = None
    emc: dict[str, Any] | None = None
    fan: dict[str, Any] = {}
    mode_name = None
    for raw in text.splitlines():
        line = raw.strip()
        header = _ONLINE_HEADER.match(line)
        if header:
            header_online = _cpu_set(header.group("online"))
            continue
        cpu = re.match(r"cpu(\d+):\s+(.*)$", line)
        if cpu:
            number = int(cpu.group(1))
            fields = dict(_KV.findall(cpu.group(2).split("IdleStates:")[0]))
            if "Online" in fields:
                online = fields["Online"] == "1"
            else:
                online = header_online is None or number in header_online
            cpus.append(
                {
                    "cpu": number,
                    "online": online,
                    "governor": fields.get("Governor"),
                    "min_khz": _int(fields.get("MinFreq", "")),
                    "max_khz": _int(fields.get("MaxFreq", "")),
                    "cur_khz": _int(fields.get("CurrentFreq", "")),
                }
            )
        elif line.startswith("GPU ") and "MinFreq=" in line:
            fields = dict(_KV.findall(line))
            gpu = {k: _int(fields.get(src, "")) for k, src in (("min_hz", "MinFreq"), ("max_hz", "MaxFreq"), ("cur_hz", "CurrentFreq"))}
        elif line.startswith("EMC ") and "MinFreq=" in line:
            fields = dict(_KV.findall(line))
            emc = {k: _int(fields.get(src, "")) for k, src in (("min_hz", "MinFreq"), ("max_hz", "MaxFreq"), ("cur_hz", "CurrentFreq"))}
            emc["override"] = fields["FreqOverride"] == "1" if "FreqOverride" in fields else None
        elif line.startswith("FAN "):
            for key, value in _KV.findall(line):
                if key == "control":  # "Speed control=active" (JP5) / "Speed Control=kernel" (JP6)
                    fan["control"] = value
                elif key == "Control":
                    fan["control"] = value
                else:
                    number = _int(value)
                    fan[key] = number if number is not None else value
        elif line.startswith("NV Power Mode:"):
            mode_name = line.split(":", 1)[1].strip() or None
    if not cpus or gpu is None or gpu.get("max_hz") is None:
        raise HwctlError("unparseable", f"jetson_clocks --show: no cpu/GPU lines in: {_tail(text)}")
    cpus.sort(key=lambda c: c["cpu"])
    return {"cpu": cpus, "gpu": gpu, "emc": emc, "fan": fan, "mode_name": mode_name}


def clocks_locked(show: dict[str, Any]) -> bool:
    """What jetson_clocks does and jtop checks: online CPUs and GPU at min == max (EMC override on)."""
    online = [c for c in show["cpu"] if c["online"]]
    cpu_ok = bool(online) and all(c["min_khz"] is not None and c["min_khz"] == c["max_khz"] for c in online)
    gpu = show["gpu"]
    gpu_ok = gpu["min_hz"] is not None and gpu["min_hz"] == gpu["max_hz"]
    emc = show.get("emc") or {}
    emc_ok = emc.get("override") is not False
    return cpu_ok and gpu_ok and emc_ok


# --------------------------------------------------------------------------- actions


class HwctlActions:
    """The three actions, over the two tools named in hwctl.toml."""

    def __init__(self, settings: HwctlSettings):
        self.settings = settings
        self._lock = threading.Lock()  # --listen: connections are threads of one process

    @contextlib.contextmanager
    def _exclusive(self):
        """apply/restore must not interleave.  With Accept=yes every connection is its own
        process, so a thread lock is not enough: flock a file in the state directory."""
        self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock, open(self.settings.state_dir / "lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run(self, tool: Path, *args: str, stdin_text: str | None = None) -> ToolOutput:
        return run_tool([str(tool), *args], self.settings.timeout_s, stdin_text)

    # -- building blocks

    def power_mode(self) -> dict[str, Any]:
        result = self._run(self.settings.nvpmodel, "-q")
        _check_exit(result)
        return parse_nvpmodel_query(result.text)

    def power_modes(self) -> dict[str, Any]:
        result = self._run(self.settings.nvpmodel, "-p", "--verbose")
        _check_exit(result)
        return parse_nvpmodel_modes(result.text)

    def clocks(self) -> dict[str, Any]:
        result = self._run(self.settings.jetson_clocks, "--show")
        _check_exit(result)
        errors = _error_lines(result.text)
        if errors:
            raise HwctlError("tool_failed", f"jetson_clocks --show: {'; '.join(errors)}")
        return parse_clocks_show(result.text)

    # -- actions

    def query(self) -> dict[str, Any]:
        mode = self.power_mode()
        show = self.clocks()
        return {
            "power_mode": mode,
            "clocks_locked": clocks_locked(show),
            "cpu": show["cpu"],
            "gpu": show["gpu"],
            "emc": show["emc"],
            "fan": show["fan"],
        }

    def resolve_mode(self, wanted: str | int | None) -> dict[str, Any]:
        """Map the requested (or default) mode to this board's id, by name."""
        listing = self.power_modes()
        modes = listing["modes"]
        if wanted is None:
            wanted = self.settings.power_modes[0]
        if isinstance(wanted, int):
            found = next((m for m in modes if m["id"] == wanted), None)
        else:
            found = next((m for m in modes if m["name"] == wanted), None)
        if found is None:
            raise HwctlError(
                "unknown_mode",
                f"power mode {wanted!r} is not on this board (modes: {', '.join(m['name'] for m in modes)})",
            )
        if found["name"] not in self.settings.power_modes:
            raise HwctlError(
                "refused",
                f"power mode {found['name']} is not allowed by {self.settings.source} "
                f"(power_modes = {self.settings.power_modes})",
            )
        return found

    def store_path(self) -> Path:
        return self.settings.state_dir / STORE_FILE

    def _store_once(self, locked_now: bool) -> dict[str, Any]:
        """Keep the pre-lock clock state of this boot, so ``restore`` returns to it.

        Clock locks do not survive a reboot, so a store from an earlier boot is stale
        and retaken.  Storing while clocks are already locked would make restore a no-op,
        so that is skipped and said.
        """
        store = self.store_path()
        boot_file = self.settings.state_dir / STORE_BOOT_FILE
        boot_id = _boot_id()
        if store.is_file() and boot_file.is_file() and boot_file.read_text().strip() == boot_id:
            return {"stored": False, "store": str(store), "note": "kept the state stored earlier this boot"}
        for stale in (store, boot_file):
            stale.unlink(missing_ok=True)  # an earlier boot's state; also --store would ask to overwrite
        if locked_now:
            return {"stored": False, "store": None, "note": "clocks were already locked before the first apply; nothing to store"}
        self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        result = self._run(self.settings.jetson_clocks, "--store", str(store))
        _check_exit(result)
        errors = _error_lines(result.text)
        if errors or not store.is_file():
            raise HwctlError("tool_failed", f"jetson_clocks --store {store}: {'; '.join(errors) or 'no file written'}")
        boot_file.write_text(boot_id + "\n")
        return {"stored": True, "store": str(store), "note": "stored the clock state"}

    def _set_mode(self, target: dict[str, Any]) -> dict[str, Any]:
        """``nvpmodel -m ID``; a change that needs a reboot is declined and reported, never confirmed."""
        result = self._run(self.settings.nvpmodel, "-m", str(target["id"]), stdin_text="NO\n")
        text = result.text
        if re.search(r"reboot required|DO YOU WANT TO REBOOT", text, re.IGNORECASE):
            return {"changed": False, "reboot_required": True, "output": _tail(text, 3)}
        errors = _error_lines(text)
        if result.returncode != 0 or errors:
            raise HwctlError(
                "tool_failed",
                f"nvpmodel -m {target['id']} failed (exit {result.returncode}): {'; '.join(errors) or _tail(text) or '(no output)'}",
            )
        return {"changed": True, "reboot_required": False}

    def apply(self, wanted: str | int | None = None) -> dict[str, Any]:
        with self._exclusive():
            target = self.resolve_mode(wanted)
            before = self.query()
            store = self._store_once(before["clocks_locked"])
            mode_step: dict[str, Any] = {"changed": False, "reboot_required": False}
            if before["power_mode"]["id"] != target["id"]:
                mode_step = self._set_mode(target)
            result = self._run(self.settings.jetson_clocks)
            _check_exit(result)
            errors = _error_lines(result.text)
            if errors:
                raise HwctlError("tool_failed", f"jetson_clocks: {'; '.join(errors)}", {"before": before})
            after = self.query()
            mode_ok = after["power_mode"]["id"] == target["id"] or mode_step["reboot_required"]
            if not after["clocks_locked"] or not mode_ok:
                raise HwctlError(
                    "verify_failed",
                    f"after apply: power mode {after['power_mode']['name']} (wanted {target['name']}), "
                    f"clocks locked={after['clocks_locked']}",
                    {"before": before, "after": after},
                )
            return {
                "target": target,
                "reboot_required": mode_step["reboot_required"],
                "mode_changed": mode_step["changed"],
                "mode_output": mode_step.get("output"),
                "store": store,
                "before": before,
                "after": after,
            }

    def restore(self) -> dict[str, Any]:
        with self._exclusive():
            store = self.store_path()
            if not store.is_file():
                raise HwctlError("no_store", f"no stored clock state at {store}: apply has not stored one")
            result = self._run(self.settings.jetson_clocks, "--restore", str(store))
            _check_exit(result)
            errors = _error_lines(result.text)
            if errors:
                raise HwctlError("tool_failed", f"jetson_clocks --restore {store}: {'; '.join(errors)}")
            return {"store": str(store), "after": self.query()}

    def run(self, action: str, power_mode: str | int | None = None) -> dict[str, Any]:
        if action == "query":
            return self.query()
        if action == "apply":
            return self.apply(power_mode)
        if action == "restore":
            return self.restore()
        raise HwctlError("refused", f"unknown action {action!r}")


def _boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return "unknown"


# --------------------------------------------------------------------------- protocol


def parse_request(line: bytes) -> tuple[str, str | int | None]:
    """Validate one request line.  Anything not exactly in the protocol is refused."""
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HwctlError("bad_request", "request is not a JSON object on one line") from None
    if not isinstance(data, dict):
        raise HwctlError("bad_request", "request must be a JSON object")
    action = data.get("action")
    if action not in ACTIONS:
        raise HwctlError("refused", f"action {action!r} refused: only {', '.join(ACTIONS)}")
    allowed = {"action", "power_mode"} if action == "apply" else {"action"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise HwctlError("refused", f"{action}: unexpected argument(s) {', '.join(extra)} refused")
    mode = data.get("power_mode")
    if mode is not None:
        if isinstance(mode, bool) or not isinstance(mode, (str, int)):
            raise HwctlError("refused", "power_mode must be a mode name or id")
        if isinstance(mode, str) and not _MODE_NAME.match(mode):
            raise HwctlError("refused", "power_mode must be a plain mode name like MAXN")
        if isinstance(mode, int) and not 0 <= mode <= 99:
            raise HwctlError("refused", "power_mode id out of range")
    return action, mode


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connecting process, as the kernel recorded it at connect()."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _read_line(conn: socket.socket, deadline: float) -> bytes:
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HwctlError("bad_request", f"no complete request line within {REQUEST_TIMEOUT_S:g} s")
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(1024)
        except socket.timeout:
            raise HwctlError("bad_request", f"no complete request line within {REQUEST_TIMEOUT_S:g} s") from None
        if not chunk:
            if buf:
                break  # a final line without newline is still one line
            raise HwctlError("bad_request", "connection closed before a request was sent")
        buf += chunk
        if len(buf) > MAX_REQUEST_BYTES:
            raise HwctlError("bad_request", f"request longer than {MAX_REQUEST_BYTES} bytes")
    line = buf.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST_BYTES:
        raise HwctlError("bad_request", f"request longer than {MAX_REQUEST_BYTES} bytes")
    return line


def serve_connection(conn: socket.socket, actions: HwctlActions) -> dict[str, Any]:
    """Check the peer, read one request, act, write one reply.  Returns the reply."""
    action = None
    try:
        try:
            pid, uid, gid = peer_credentials(conn)
        except OSError as exc:
            raise HwctlError("refused", f"cannot identify the peer (SO_PEERCRED: {exc})") from None
        uids, gids = actions.settings.allowed_ids()
        if uid not in uids and gid not in gids:
            log.warning("refused peer pid=%s uid=%s gid=%s: not an allowed user or group", pid, uid, gid)
            raise HwctlError("refused", f"peer uid={uid} gid={gid} is not allowed to use hwctl")
        action, mode = parse_request(_read_line(conn, time.monotonic() + REQUEST_TIMEOUT_S))
        log.info("request action=%s power_mode=%s peer_pid=%s uid=%s", action, mode, pid, uid)
        reply = {"ok": True, "action": action, "result": actions.run(action, mode)}
    except HwctlError as exc:
        reply = {"ok": False, "action": action, "error": exc.to_dict()}
    except Exception as exc:  # noqa: BLE001 - the peer gets an answer, the log the traceback
        log.exception("internal error")
        reply = {"ok": False, "action": action, "error": {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}}
    try:
        conn.settimeout(REQUEST_TIMEOUT_S)
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError as exc:
        log.warning("could not send the reply: %s", exc)
    return reply


def listen(path: Path, actions: HwctlActions, *, mode: int = 0o660, group: str | int | None = None,
           stop: threading.Event | None = None) -> None:
    """Standalone server (tests, non-systemd hosts): one thread per connection."""
    # Bind and listen under a temporary name, then rename: a client that sees the path
    # must never meet a bound-but-not-listening socket (ECONNREFUSED) or loose permissions.
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(staging))
    os.chmod(staging, mode)
    if group is not None:
        gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        os.chown(staging, -1, gid)
    server.listen(16)
    os.replace(staging, path)
    server.settimeout(0.5)
    log.info("listening on %s", path)
    try:
        while stop is None or not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue

            def handle(c: socket.socket = conn) -> None:
                with c:
                    serve_connection(c, actions)

            threading.Thread(target=handle, daemon=True).start()
    finally:
        server.close()
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- entry point


def _stderr_is_the_connection() -> bool:
    """With StandardInput=socket and no StandardError=journal, systemd points stderr at the
    connection too; a log line there would corrupt the one-line reply."""
    try:
        err, conn = os.fstat(2), os.fstat(0)
    except OSError:
        return False
    return stat.S_ISSOCK(err.st_mode) and (err.st_dev, err.st_ino) == (conn.st_dev, conn.st_ino)


def _log_setup(verbose: bool, stdio: bool = False) -> None:
    if stdio and _stderr_is_the_connection():
        from logging.handlers import SysLogHandler

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # nothing but the reply may reach the peer, not even a traceback
        os.dup2(devnull, 2)
        os.close(devnull)
        logging.raiseExceptions = False
        try:
            handler: logging.Handler = SysLogHandler(address="/dev/log")
        except OSError:
            handler = logging.NullHandler()
        logging.getLogger().handlers[:] = [handler]
        logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    # same <N> syslog prefixes as the daemon (ishowtts_edge.logs), without importing it
    levels = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    class _Fmt(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"<{levels.get(record.levelno, 6)}>hwctl: {record.getMessage()}"

    handler.setFormatter(_Fmt())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ishowtts-edge-hwctl",
        description="Query, apply or restore the Jetson power mode and clocks (root only).",
    )
    parser.add_argument("action", nargs="?", choices=ACTIONS, help="run one action and print its JSON reply")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"hwctl config (default {DEFAULT_CONFIG})")
    parser.add_argument("--power-mode", help="apply: mode name (must be listed in power_modes)")
    parser.add_argument("--stdio", action="store_true", help="serve one connection on fd 0 (systemd Accept=yes)")
    parser.add_argument("--listen", type=Path, metavar="PATH", help="serve on a unix socket until killed")
    parser.add_argument("--socket-mode", default="0660", help="--listen socket permissions (octal, default 0660)")
    parser.add_argument("--socket-group", help="--listen socket group (default: none changed)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    chosen = sum(bool(x) for x in (args.action, args.stdio, args.listen))
    if chosen != 1:
        parser.error("give exactly one of: an action, --stdio, --listen PATH")
    if args.power_mode is not None and args.action != "apply":
        parser.error("--power-mode only goes with apply")
    _log_setup(args.verbose, stdio=args.stdio)

    try:
        settings = HwctlSettings.load(args.config)
    except HwctlError as exc:
        log.error("%s", exc.message)
        if args.stdio:  # the peer still gets an answer
            with socket.socket(fileno=os.dup(0)) as conn:
                serve_error(conn, exc)
        elif args.action:
            print(json.dumps({"ok": False, "action": args.action, "error": exc.to_dict()}))
        return 1
    actions = HwctlActions(settings)

    if args.stdio:
        with socket.socket(fileno=os.dup(0)) as conn:
            reply = serve_connection(conn, actions)
        return 0 if reply["ok"] else 1
    if args.listen:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            listen(args.listen, actions, mode=int(args.socket_mode, 8), group=args.socket_group)
        except KeyboardInterrupt:
            pass
        return 0

    if os.geteuid() != 0:
        exc = HwctlError("not_root", "ishowtts-edge-hwctl must run as root (the daemon reaches it through its socket)")
        print(json.dumps({"ok": False, "action": args.action, "error": exc.to_dict()}))
        return 1
    mode: str | int | None = args.power_mode
    if mode is not None and mode.isdigit():
        mode = int(mode)
    try:
        reply = {"ok": True, "action": args.action, "result": actions.run(args.action, mode)}
    except HwctlError as exc:
        reply = {"ok": False, "action": args.action, "error": exc.to_dict()}
    print(json.dumps(reply, indent=2))
    return 0 if reply["ok"] else 1


def serve_error(conn: socket.socket, exc: HwctlError) -> None:
    try:
        conn.settimeout(REQUEST_TIMEOUT_S)
        conn.sendall(json.dumps({"ok": False, "action": None, "error": exc.to_dict()}).encode() + b"\n")
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
