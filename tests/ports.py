"""A local port nothing answers on, held for as long as a test needs it.

A socket bound to 127.0.0.1 that never listens: a connection to its port is refused at once, and while the socket
is open no other program can take the port (a port found free and then released could be taken by then)."""

from __future__ import annotations

import contextlib
import socket


@contextlib.contextmanager
def refusing_port():
    """Yield a port on 127.0.0.1 that refuses connections until the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
