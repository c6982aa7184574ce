"""Ports for the servers simclr starts."""

from __future__ import annotations

import socket

import pytest

from simclr.ports import PortInUseError, check_port_free, free_port


def test_a_free_port_can_be_bound_and_a_busy_one_is_named() -> None:
    port = free_port()
    check_port_free("127.0.0.1", port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(PortInUseError, match=f"--grpc-port {port} on 127.0.0.1 is in use"):
            check_port_free("127.0.0.1", port, "--grpc-port")
