"""The test servers' own start: a probed port taken before the bind is not a failed test."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.e2e.conftest import ApiServer, embedded_env
from tests.servers import HOST


def test_a_server_whose_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = ApiServer(tmp_path, embedded_env(tmp_path))
        server.port = taken  # as if another process bound it after the probe
        with server:
            assert server.port != taken
            assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert b"address already in use" in server.log_path.read_bytes().lower()
