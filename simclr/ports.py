"""TCP ports for the servers simclr starts: pick a free one, or refuse a busy one before anything starts."""

from __future__ import annotations

import socket


class PortInUseError(OSError):
    """Something already listens on a port a server was asked to use."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now (the system picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port_free(host: str, port: int, option: str = "--port") -> None:
    """PortInUseError naming `option` when something already listens on `port` (an orphaned server, another
    service)."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no use
        try:
            probe.bind((host, port))
        except OSError as error:
            raise PortInUseError(f"{option} {port} on {host} is in use ({error.strerror}): stop what listens there "
                                 "or choose another port") from None
