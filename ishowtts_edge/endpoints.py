"""Claiming and releasing the daemon's ZeroMQ endpoints (the request ROUTER and the events PUB).

ZeroMQ's ipc bind unlinks whatever socket file is at the path, including one a live
daemon listens on, which then becomes unreachable.  So before binding, the endpoint is
probed: a socket file nobody answers on is stale (left by a crash) and removed; one
that answers, or a tcp port that accepts, belongs to someone else and is refused.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path
from urllib.parse import urlparse

from .logs import kv

log = logging.getLogger(__name__)

#: Seconds a probe waits for a connection to be accepted.
PROBE_TIMEOUT_S = 1.0


class EndpointError(RuntimeError):
    """The endpoint cannot be claimed; the message says which and why."""


class EndpointInUse(EndpointError):
    """Something answers on the endpoint: another daemon, most likely."""


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ipc endpoint; None for tcp and for Linux's abstract namespace ("@name")."""
    if not endpoint.startswith("ipc://"):
        return None
    name = endpoint[len("ipc://") :]
    return None if name.startswith("@") else Path(name)


def connect_endpoint(bound: str) -> str:
    """Where a local client reaches a socket bound at ``bound`` (a wildcard tcp host means loopback)."""
    for wildcard, loopback in (("tcp://*:", "tcp://127.0.0.1:"), ("tcp://0.0.0.0:", "tcp://127.0.0.1:"),
                               ("tcp://[::]:", "tcp://[::1]:")):
        if bound.startswith(wildcard):
            return loopback + bound[len(wildcard):]
    return bound


def claim(endpoint: str) -> None:
    """Make ``endpoint`` ready to bind: EndpointInUse when something answers there.

    ipc: create the directory; remove a socket file nobody listens on; refuse a file
    that is not a socket (it is not ours to remove).  tcp: refuse a port that accepts.
    """
    path = ipc_path(endpoint)
    if path is not None:
        _claim_ipc(path, endpoint)
    elif endpoint.startswith("tcp://"):
        _probe_tcp(endpoint)


#: What probe_ipc finds at a socket path.
ABSENT, NOT_A_SOCKET, STALE, LISTENING = "absent", "not a socket", "stale", "listening"


def probe_ipc(path: Path, follow_symlinks: bool = True) -> str:
    """What is at the unix socket path ``path``: ABSENT, NOT_A_SOCKET, STALE (a socket file
    nobody accepts on: left by a process that died) or LISTENING.

    A socket file is told stale from live only by connecting to it (nothing is sent).
    Raises PermissionError when the caller may not reach or connect to it, and OSError
    when the connection neither succeeds nor is refused (EAGAIN: a full backlog).
    """
    try:
        st = path.stat() if follow_symlinks else path.lstat()
    except FileNotFoundError:
        return ABSENT
    if not stat.S_ISSOCK(st.st_mode):
        return NOT_A_SOCKET
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return STALE
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return STALE
        raise
    finally:
        probe.close()
    return LISTENING


def _claim_ipc(path: Path, endpoint: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EndpointError(f"{endpoint}: cannot create {path.parent}: {exc}") from None
    try:
        # lstat: a symbolic link is not ours to replace, whatever it points at.
        found = probe_ipc(path, follow_symlinks=False)
    except OSError as exc:
        raise EndpointError(f"{endpoint}: cannot probe {path}: {exc}") from None
    if found == ABSENT:
        return
    if found == NOT_A_SOCKET:
        raise EndpointError(f"{endpoint}: {path} exists and is not a socket; not removing it")
    if found == LISTENING:
        raise EndpointInUse(f"{endpoint}: {path} is in use by another process (is another daemon running?)")
    log.info("stale socket removed %s", kv(path=path))
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _probe_tcp(endpoint: str) -> None:
    url = urlparse(connect_endpoint(endpoint))
    try:
        host, port = url.hostname, url.port
    except ValueError:  # a port out of range: bind reports it
        return
    if not host or port is None:  # "tcp://127.0.0.1:*" (any free port) and the like
        return
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError:
        return  # refused, unreachable, unresolvable: nobody of ours there; bind says the rest
    raise EndpointInUse(f"{endpoint}: port {port} on {host} accepts connections already (is another daemon running?)")


def restrict_ipc(endpoint: str, mode: int = 0o660) -> int | None:
    """Owner and group only (local apps reach the daemon through its group); the file's inode, for release()."""
    path = ipc_path(endpoint)
    if path is None:
        return None
    os.chmod(path, mode)
    return path.stat().st_ino


def release(endpoint: str, inode: int | None) -> None:
    """Remove our socket file, unless another process has replaced it since (its inode differs)."""
    path = ipc_path(endpoint)
    if path is None:
        return
    try:
        if inode is None or path.stat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("socket not removed %s", kv(path=path, error=exc))
