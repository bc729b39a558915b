"""Free loopback ports for the processes tests start (shared by every conftest)."""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nobody listens on right now (bound and released by the kernel's choice), and
    never one this process handed out before: ports are picked before the processes that
    bind them start, and the kernel may offer a just-released port again (a proxy once got
    the port already picked for a broker of the same site: "address already in use")."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
