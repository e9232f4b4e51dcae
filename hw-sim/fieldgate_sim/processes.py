"""Stopping the child processes we started (broker, simulator, gateway), by their handle."""

from __future__ import annotations

import signal
import subprocess


def terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``. Returns the exit code of a
    clean exit, or None if it had to be killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
