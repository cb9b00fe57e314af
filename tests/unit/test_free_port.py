"""The tests' port helper: two services asked for in one test never get the same port."""

from __future__ import annotations

from tests.support import free_port


def test_free_ports_handed_out_in_one_session_are_all_distinct() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port <= 65535 for port in ports)
