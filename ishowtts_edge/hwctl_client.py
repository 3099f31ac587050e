"""The daemon's side of hwctl: ask the root program over its unix socket, get a result or an HwctlCallError.

The daemon is unprivileged (NoNewPrivileges), so it never runs nvpmodel or
jetson_clocks itself; it asks ``ishowtts-edge-hwctl`` through
``ishowtts-edge-hwctl.socket`` (docs/security.md).  What the two sides share is the
one-line JSON protocol described in :mod:`ishowtts_edge.hwctl`; no root code is
imported here, and hwctl imports nothing of the package.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from .config import HardwareConfig


class HwctlCallError(Exception):
    """A call to hwctl failed.  ``kind`` is the kind hwctl sent (its HwctlError's) or one of
    the transport's: not_installed, not_running, permission, timeout, protocol."""

    def __init__(self, kind: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}


class HwctlClient:
    """query() / apply() / restore() through the hwctl socket; each returns the result dict."""

    def __init__(self, cfg: HardwareConfig):
        self.cfg = cfg

    def query(self) -> dict[str, Any]:
        return self._call({"action": "query"})

    def apply(self) -> dict[str, Any]:
        return self._call({"action": "apply", "power_mode": self.cfg.power_mode})

    def restore(self) -> dict[str, Any]:
        return self._call({"action": "restore"})

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        path = self.cfg.hwctl_socket
        action = request["action"]
        try:
            reply = call(path, request, self.cfg.hwctl_timeout_s)
        except FileNotFoundError:
            raise HwctlCallError(
                "not_installed",
                f"hwctl socket {path} does not exist: ishowtts-edge-hwctl.socket is not installed or not started",
            ) from None
        except PermissionError:
            raise HwctlCallError(
                "permission",
                f"permission denied on {path}: the daemon's user must be in the socket's group (ishowtts-edge)",
            ) from None
        except ConnectionRefusedError:
            raise HwctlCallError("not_running", f"nothing accepts connections on {path} (is ishowtts-edge-hwctl.socket stopped?)") from None
        except TimeoutError:
            raise HwctlCallError("timeout", f"hwctl gave no reply to {action} within {self.cfg.hwctl_timeout_s:g} s") from None
        except (ConnectionError, OSError) as exc:
            raise HwctlCallError("protocol", f"hwctl connection failed during {action}: {exc}") from None
        except ValueError as exc:
            raise HwctlCallError("protocol", f"hwctl sent an unreadable reply to {action}: {exc}") from None
        if reply.get("ok"):
            result = reply.get("result")
            if not isinstance(result, dict):
                raise HwctlCallError("protocol", f"hwctl reply to {action} has no result")
            return result
        error = reply.get("error") or {}
        raise HwctlCallError(
            str(error.get("kind", "protocol")),
            f"hwctl {action}: {error.get('message', 'failed without a message')}",
            error.get("details") if isinstance(error.get("details"), dict) else None,
        )


def call(socket_path: Path | str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Send one request to an hwctl socket and return its reply object.

    Transport problems raise OSError subclasses / TimeoutError / ValueError;
    :class:`HwctlClient` turns them into HwctlCallErrors with clear messages.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(socket_path))
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
        except BrokenPipeError:
            pass  # a refused peer is answered without its request being read: the reply is waiting
        deadline = time.monotonic() + timeout_s
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply within {timeout_s:g} s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise TimeoutError(f"no reply within {timeout_s:g} s") from None
            if not chunk:
                break
            buf += chunk
    if not buf.strip():
        raise ConnectionError("hwctl closed the connection without a reply")
    reply = json.loads(buf.split(b"\n", 1)[0])
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ValueError("the reply is not a reply object")
    return reply
