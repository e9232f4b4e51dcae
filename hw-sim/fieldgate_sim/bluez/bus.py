"""A private ``dbus-daemon`` standing in for the system bus: allow-all policy, a socket in a
temporary directory, started as a child process and stopped by its PID."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldgate_sim.processes import terminate

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


def find_dbus_daemon() -> str:
    found = shutil.which("dbus-daemon") or shutil.which("dbus-daemon", path="/usr/bin:/bin")
    if found is None:
        raise FileNotFoundError("dbus-daemon is not installed: apt-get install dbus")
    return found


class PrivateBus:
    """``with PrivateBus() as bus:`` a D-Bus daemon at ``bus.address``; point
    ``DBUS_SYSTEM_BUS_ADDRESS`` of a process at it and that process's system bus is this one."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fieldgate-dbus-")
        directory = Path(self._dir.name)
        directory.chmod(0o755)  # a gateway started as another user can reach the socket
        config = directory / "bus.conf"
        config.write_text(_CONFIG.format(socket=directory / "system_bus_socket"))
        self._process = subprocess.Popen(  # noqa: S603 - our own binary and config
            [find_dbus_daemon(), f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        assert self._process.stdout is not None
        # The daemon prints its address once it listens.
        line = self._process.stdout.readline().decode().strip()
        if not line:
            self.stop()
            raise RuntimeError("dbus-daemon exited before it listened")
        self.address = line

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, 5.0)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

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
