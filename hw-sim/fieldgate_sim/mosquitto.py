"""A throwaway Mosquitto broker on loopback, for tests, the demo and the benchmarks: the real
broker the gateway talks to upstream, started as a child process and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldgate_sim.processes import terminate


def find_mosquitto() -> str:
    """The broker binary; Debian installs it in /usr/sbin, which is not on every PATH."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FileNotFoundError("mosquitto is not installed: apt-get install mosquitto")
    return found


@dataclass(frozen=True)
class BrokerTls:
    """The broker's side of TLS: its certificate and key, and the CA its clients' certificates
    must come from."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


def find_mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/sbin:/usr/local/bin"
    )
    if found is None:
        raise FileNotFoundError("mosquitto_passwd is not installed: apt-get install mosquitto")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MosquittoBroker:
    """``with MosquittoBroker() as broker:`` a broker on ``broker.port``; ``stop()`` and
    ``start()`` again on the same port simulate an outage.

    With ``users`` (name -> password) only those users may connect (``allow_anonymous false``).
    With ``tls`` the listener speaks TLS only, with that certificate, and asks clients for
    certificates of that CA when ``tls.require_certificate``.
    With ``persistence`` False (or the attribute set so before a ``start()``) the broker keeps
    nothing across a restart: sessions, subscriptions and queued messages are gone, as on a
    broker configured without persistence.
    """

    def __init__(
        self,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        tls: BrokerTls | None = None,
        *,
        persistence: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.persistence = persistence
        self._tls = tls
        self.port = port or free_port()
        self._users = dict(users or {})
        self._dir = Path(tempfile.mkdtemp(prefix="fieldgate-mosquitto-"))
        # Run as root, mosquitto drops to its own user, which must read the config and write
        # its persistence file here.
        self._dir.chmod(0o777)
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = self._dir / "mosquitto.log"

    def start(self, timeout: float = 5.0) -> None:
        config = self._dir / "mosquitto.conf"
        settings = (
            # Persistence (by default), so that a stop/start outage keeps subscribers' sessions
            # and queues.
            f"persistence {'true' if self.persistence else 'false'}\n"
            f"persistence_location {self._dir}/\n"
            "log_dest stdout\n"
            # Also to a file, which mosquitto flushes line by line (stdout to a file is
            # flushed only at exit), so a test can read what happened while it runs.
            f"log_dest file {self._dir}/subscriptions.log\n"
            # The default types, and subscriptions: tests check what a gateway subscribed to.
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "log_type subscribe\n"
            # The default per-client queue (1000) drops QoS 1 messages in bulk tests.
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
        )
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + self._tls_config()
            + settings
            + self._access_config()
        )
        config.chmod(0o644)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own binary and config
                [find_mosquitto(), "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-500:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def subscriptions(self, client_id: str) -> list[str]:
        """The topic filters ``client_id`` subscribed to, from the broker's log."""
        found = []
        log = self._dir / "subscriptions.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            parts = line.split()
            # "<time>: <client id> <qos> <topic filter>" (log_type subscribe)
            if len(parts) == 4 and parts[1] == client_id and parts[2].isdigit():
                found.append(parts[3])
        return found

    def _tls_config(self) -> str:
        if self._tls is None:
            return ""
        # Copied into the broker's own directory: run as root, mosquitto drops to a user that
        # cannot read a test's private temporary directory.
        copies = {}
        for name, source in (
            ("ca.crt", self._tls.ca_file),
            ("server.crt", self._tls.cert_file),
            ("server.key", self._tls.key_file),
        ):
            copy = self._dir / name
            shutil.copyfile(source, copy)
            copy.chmod(0o644)
            copies[name] = copy
        return (
            f"cafile {copies['ca.crt']}\ncertfile {copies['server.crt']}\n"
            f"keyfile {copies['server.key']}\n"
            f"require_certificate {'true' if self._tls.require_certificate else 'false'}\n"
        )

    def _access_config(self) -> str:
        if not self._users:
            return "allow_anonymous true\n"
        passwords = self._dir / "passwords"
        passwords.unlink(missing_ok=True)
        for name, password in self._users.items():
            create = [] if passwords.exists() else ["-c"]
            subprocess.run(  # noqa: S603 - our own binary and arguments
                [find_mosquitto_passwd(), *create, "-b", str(passwords), name, password],
                check=True,
                capture_output=True,
            )
        # Readable by the mosquitto user that a broker started as root drops to.
        passwords.chmod(0o644)
        return f"allow_anonymous false\npassword_file {passwords}\n"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, timeout=5)

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (for CPU figures in benchmarks)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def mosquitto_available() -> bool:
    try:
        find_mosquitto()
    except FileNotFoundError:
        return False
    return os.access(find_mosquitto(), os.X_OK)
