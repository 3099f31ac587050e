"""The ZeroMQ front end (core.py says how it works), one module per part:

``core`` the Server (life cycle, reading, handling), ``worker`` its synthesis worker,
``queue`` the fair queue and admission, ``stream`` streamed replies, ``cancel``
cancellation, ``gate`` the connection cap, ``wakeup`` sleeping on descriptors,
``job`` a request's life and reply header, ``stats`` the counters.
"""

from ..endpoints import connect_endpoint, ipc_path
from .core import Server, SynthesisBackend
from .job import synthesis_header
from .stats import ServerStats

__all__ = ["Server", "ServerStats", "SynthesisBackend", "connect_endpoint", "ipc_path", "synthesis_header"]
