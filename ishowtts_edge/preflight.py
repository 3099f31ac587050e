"""Start-up preflight: bring the board's power mode and clocks to ``[hardware]``'s target once.

The daemon asks hwctl through :class:`~ishowtts_edge.hwctl_client.HwctlClient`
(docs/security.md).  Preflight never raises: hwctl missing or a non-Jetson host is
a visible state in ``status``, not a crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .config import HardwareConfig
from .hwctl_client import HwctlCallError, HwctlClient
from .logs import kv

log = logging.getLogger(__name__)


@dataclass
class PreflightResult:
    """What the daemon shows in status.  state: ok | applied | degraded | disabled."""

    state: str
    message: str
    power_mode: dict[str, Any] | None = None  # {"id", "name"} after preflight
    clocks_locked: bool | None = None
    reboot_required: bool = False
    changes: list[str] = field(default_factory=list)
    #: The clocks jetson_clocks locked (gpu_hz, cpu_hz: the lowest core, emc_hz); None when not locked.
    clock_targets: dict[str, int | None] | None = None

    @property
    def summary(self) -> str:
        return f"{self.state}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "message": self.message,
            "summary": self.summary,
            "power_mode": self.power_mode,
            "clocks_locked": self.clocks_locked,
            "reboot_required": self.reboot_required,
            "changes": list(self.changes),
            "clock_targets": self.clock_targets,
        }


def mode_matches(mode: dict[str, Any] | None, wanted: str | int) -> bool:
    if not mode:
        return False
    if isinstance(wanted, int):
        return mode.get("id") == wanted
    return mode.get("name") == wanted


def clock_targets(query: dict[str, Any]) -> dict[str, int | None] | None:
    """What an hwctl query shows the clocks locked at (the metrics compare telemetry with it)."""
    if not query.get("clocks_locked"):
        return None
    cpus = [c.get("max_khz") for c in query.get("cpu") or [] if c.get("online") and c.get("max_khz")]
    return {
        "gpu_hz": (query.get("gpu") or {}).get("max_hz"),
        "cpu_hz": min(cpus) * 1000 if cpus else None,
        "emc_hz": (query.get("emc") or {}).get("max_hz"),
    }


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable ``what: old -> new`` lines between two hwctl queries."""
    changes = []
    mb, ma = before.get("power_mode") or {}, after.get("power_mode") or {}
    if mb != ma:
        changes.append(f"power_mode: {mb.get('name')} -> {ma.get('name')}")
    if before.get("clocks_locked") != after.get("clocks_locked"):
        changes.append(f"clocks_locked: {before.get('clocks_locked')} -> {after.get('clocks_locked')}")
    gb, ga = before.get("gpu") or {}, after.get("gpu") or {}
    for key in ("min_hz", "max_hz"):
        if gb.get(key) != ga.get(key):
            changes.append(f"gpu_{key[:3]}_mhz: {_mhz(gb.get(key))} -> {_mhz(ga.get(key))}")
    cb = [c.get("min_khz") for c in before.get("cpu") or [] if c.get("online")]
    ca = [c.get("min_khz") for c in after.get("cpu") or [] if c.get("online")]
    if cb != ca and ca:
        changes.append(f"cpu_min_mhz: {_mhz_k(min(cb) if cb else None)} -> {_mhz_k(min(ca))}")
    eb, ea = before.get("emc") or {}, after.get("emc") or {}
    if eb.get("override") != ea.get("override"):
        changes.append(f"emc_locked: {eb.get('override')} -> {ea.get('override')}")
    return changes


def _mhz(hz: Any) -> Any:
    return round(hz / 1e6, 1) if isinstance(hz, (int, float)) else hz


def _mhz_k(khz: Any) -> Any:
    return round(khz / 1e3, 1) if isinstance(khz, (int, float)) else khz


def _degraded_or_disabled(exc: HwctlCallError, cfg: HardwareConfig) -> PreflightResult:
    if exc.kind in ("not_installed", "not_running") and not cfg.nvpmodel.exists() and not cfg.jetson_clocks.exists():
        return PreflightResult("disabled", f"not a Jetson (no {cfg.nvpmodel}); hardware management is off")
    if exc.kind == "tool_missing":
        return PreflightResult("disabled", f"not a Jetson or tools missing: {exc.message}")
    return PreflightResult("degraded", exc.message)


def preflight(client: HwctlClient, cfg: HardwareConfig) -> PreflightResult:
    """Bring power mode and clocks to the target once at start; report, never raise."""
    try:
        result = _preflight(client, cfg)
    except Exception as exc:  # noqa: BLE001 - a preflight bug must not take the TTS service down
        log.exception("hardware preflight failed unexpectedly")
        result = PreflightResult("degraded", f"preflight failed: {type(exc).__name__}: {exc}")
    level = logging.INFO if result.state in ("ok", "applied", "disabled") else logging.WARNING
    log.log(level, "hardware preflight %s", kv(state=result.state, message=result.message))
    return result


def _preflight(client: HwctlClient, cfg: HardwareConfig) -> PreflightResult:
    if not cfg.enabled:
        return PreflightResult("disabled", "hardware management disabled (hardware.enabled = false)")
    try:
        before = client.query()
    except HwctlCallError as exc:
        return _degraded_or_disabled(exc, cfg)
    mode = before.get("power_mode")
    locked = bool(before.get("clocks_locked"))
    if mode_matches(mode, cfg.power_mode) and locked:
        return PreflightResult("ok", f"power mode {mode['name']}, clocks locked", mode, True,
                               clock_targets=clock_targets(before))
    wanted = f"power mode {cfg.power_mode} with clocks locked"
    now = f"power mode {(mode or {}).get('name')}, clocks {'locked' if locked else 'not locked'}"
    if not cfg.apply_at_start:
        return PreflightResult("degraded", f"{now} (want {wanted}; hardware.apply_at_start = false)", mode, locked)
    try:
        applied = client.apply()
    except HwctlCallError as exc:
        log.warning("could not apply %s", kv(want=cfg.power_mode, reason=exc.message))
        result = _degraded_or_disabled(exc, cfg)
        if result.state == "degraded":
            result.message = f"{now}; apply failed: {exc.message}"
            result.power_mode, result.clocks_locked = mode, locked
        return result
    after = applied.get("after") or {}
    changes = describe_changes(before, after)
    for change in changes:
        what, _, values = change.partition(": ")
        log.info("hardware changed %s", kv(what=what, change=values))
    store = applied.get("store") or {}
    if store.get("note"):
        log.info("clock store %s", kv(store=store.get("store"), note=store.get("note")))
    after_mode = after.get("power_mode")
    after_locked = bool(after.get("clocks_locked"))
    if applied.get("reboot_required"):
        target = applied.get("target") or {}
        return PreflightResult(
            "degraded",
            f"power mode {target.get('name')} needs a reboot: run `sudo nvpmodel -m {target.get('id')}` and reboot "
            f"(never confirmed automatically); clocks locked in {(after_mode or {}).get('name')}",
            after_mode,
            after_locked,
            reboot_required=True,
            changes=changes,
            clock_targets=clock_targets(after),
        )
    return PreflightResult(
        "applied",
        f"power mode {(after_mode or {}).get('name')}, clocks locked ({'; '.join(changes) or 'no visible change'})",
        after_mode,
        after_locked,
        changes=changes,
        clock_targets=clock_targets(after),
    )
