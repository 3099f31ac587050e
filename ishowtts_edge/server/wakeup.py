"""Sleeping on descriptors, and waking a sleeper early.

The server's threads never sleep inside a ZeroMQ call while they hold its lock: they
sleep here, on the ROUTER's ZMQ_FD notification descriptor plus a wake-up pipe of their
own, which another thread pokes when it hands over the reading or has work for them.
"""

from __future__ import annotations

import os
import select


class Wakeup:
    """A self-pipe: lets one thread end another's select() early."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def poke(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:  # already poked and not yet drained: enough
            pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)


def sleep_on(fds: list[int], timeout_s: float) -> None:
    """Wait, without the GIL, until one of ``fds`` is readable or ``timeout_s`` passes."""
    poller = select.poll()  # not select(): no FD_SETSIZE limit on the descriptor numbers
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll(max(0, int(timeout_s * 1000)))  # PEP 475: a signal does not end it early
