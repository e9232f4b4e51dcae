"""Logging as journald wants it, configured once by the CLI: one line per event, no timestamps of
our own (journald adds them), and the priority as an sd-daemon(3) prefix (``<4>``) when stderr
is the journal, so that ``journalctl -p warning`` shows failures and nothing else."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

#: syslog priorities of Python's levels (sd-daemon(3)).
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``. A traceback's further lines carry no prefix: journald
    files them under the stream's default priority, right after the line they belong to."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 4)
        return f"<{priority}>{super().format(record)}"


def writes_to_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal: systemd sets ``JOURNAL_STREAM`` to its device and
    inode (systemd.exec(5)); a redirected stderr under the same service is not the journal."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def configure_logging(verbose: bool, stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    if writes_to_journal(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # pymodbus logs every timeout at ERROR; fieldgate reports device failures itself, once
        # per outage with the device's name, so pymodbus's own lines would only be noise.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
