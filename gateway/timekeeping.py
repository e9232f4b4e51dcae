"""Whether the wall clock can be believed, on a box without a real-time clock.

A Raspberry Pi boots at 1970 or at the last time fake-hwclock saved, and the wall clock is
right only once an NTP client has synchronised it; it can also step later (NTP's first sync,
an operator's ``date -s``). Readings taken before the sync are stamped with the monotonic clock
and the boot id (see :class:`gateway.readings.Unsynchronised`), held in the buffer, and
restamped when the clock synchronises (:func:`restamped_ms`).

The evidence is gathered by :func:`system_evidence` and judged by the pure
:func:`wall_trustworthy`, so tests inject states instead of changing the machine's time.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

#: No reading can have been taken before this release was built: a wall clock below it is
#: certainly wrong (1970 after a power cut, or an image's stale saved time). Raise it with
#: each release.
BUILD_FLOOR = datetime(2026, 11, 1, tzinfo=UTC).timestamp()

#: A change of the wall clock against the monotonic one beyond this is a step, not slewing
#: (NTP slews by at most 0.5 ms a second; timesyncd and chrony step beyond 0.4 s and 1 s).
STEP_THRESHOLD = 1.0

#: How long a verdict on the evidence is kept: the kernel's status and the NTP client's flag
#: change once a boot, and the check runs for every reading.
RECHECK_EVERY = 5.0

# adjtimex(2)'s answer when the kernel's STA_UNSYNC (or another error status) is set.
_TIME_ERROR = 5
# Larger than struct timex on every ABI (208 bytes on 64-bit): zeroed, its modes field is 0,
# which makes the call read-only and allowed without CAP_SYS_TIME.
_TIMEX_BYTES = 512

_RUN = Path("/run")
# Present while an NTP client runs: only then does the kernel's "unsynchronised" mean "not
# yet". Without one (a VM or container whose time comes from the host) the kernel says
# unsynchronised forever and proves nothing.
_NTP_CLIENT_MARKS = ("systemd/timesync", "chrony", "chronyd.pid", "ntpd.pid", "ntpsec")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class SyncEvidence:
    """What the machine says about its wall clock; None where it cannot tell."""

    #: An NTP client runs on this machine.
    ntp_client_running: bool
    #: systemd-timesyncd's flag (/run/systemd/timesync/synchronized); None: it does not run.
    timesyncd_synchronised: bool | None
    #: adjtimex(2): the kernel's STA_UNSYNC is clear; None: the call is refused (systemd's
    #: ProtectClock= refuses even a read) or missing.
    kernel_synchronised: bool | None


def wall_trustworthy(wall: float, evidence: SyncEvidence, floor: float = BUILD_FLOOR) -> bool:
    """Whether a reading stamped with ``wall`` now carries a time that can go upstream."""
    if wall < floor:
        return False
    if evidence.kernel_synchronised:
        return True  # some NTP client disciplined the kernel's clock
    if evidence.timesyncd_synchronised is not None:
        return evidence.timesyncd_synchronised
    # False only while a client runs and has not synchronised yet; otherwise nothing here
    # disciplines the clock, or nothing tells, and the floor is all we have.
    return not (evidence.ntp_client_running and evidence.kernel_synchronised is False)


def system_evidence(run: Path = _RUN) -> SyncEvidence:
    """Gather the evidence: a few stat calls on /run (a tmpfs) and one syscall, cheap enough
    for the event loop."""
    timesync = run / "systemd" / "timesync"
    return SyncEvidence(
        ntp_client_running=any((run / mark).exists() for mark in _NTP_CLIENT_MARKS),
        timesyncd_synchronised=(timesync / "synchronized").exists() if timesync.is_dir() else None,
        kernel_synchronised=kernel_synchronised(),
    )


def kernel_synchronised() -> bool | None:
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    state = adjtimex(ctypes.create_string_buffer(_TIMEX_BYTES))
    if state < 0:
        return None  # EPERM under ProtectClock=, ENOSYS elsewhere
    return bool(state != _TIME_ERROR)


@functools.cache
def _adjtimex() -> Callable[[ctypes.Array[ctypes.c_char]], int] | None:
    try:
        function: Callable[[ctypes.Array[ctypes.c_char]], int] = ctypes.CDLL(
            None, use_errno=True
        ).adjtimex
    except (OSError, AttributeError):
        return None
    return function


class TrustCheck:
    """:func:`wall_trustworthy` with the evidence re-gathered at most every
    :data:`RECHECK_EVERY` seconds (of the monotonic clock); the floor is checked every time."""

    def __init__(
        self,
        evidence: Callable[[], SyncEvidence] = system_evidence,
        floor: float = BUILD_FLOOR,
    ) -> None:
        self._evidence = evidence
        self._floor = floor
        self._known: SyncEvidence | None = None
        self._checked_at = 0.0

    def synchronised(self, wall: float, monotonic: float) -> bool:
        if self._known is None or monotonic - self._checked_at >= RECHECK_EVERY:
            self._known = self._evidence()
            self._checked_at = monotonic
        return wall_trustworthy(wall, self._known, self._floor)


def current_boot_id(path: Path = _BOOT_ID) -> str:
    """The kernel's id of this boot: monotonic stamps compare only within one boot. Without
    it, an id of this process: readings it held are then flagged, not restamped, after a
    restart (wrongly cautious, never wrong)."""
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return f"process-{uuid.uuid4()}"


def restamped_ms(sync_wall_ms: int, sync_monotonic_ms: int, reading_monotonic_ms: int) -> int:
    """A held reading's wall time, once the clock is synchronised: the synchronised wall time
    less the monotonic time that passed since the reading."""
    return sync_wall_ms - (sync_monotonic_ms - reading_monotonic_ms)


class StepLog:
    """Logs each step of the wall clock once, however many pollers notice it."""

    def __init__(self, threshold: float = STEP_THRESHOLD) -> None:
        self._threshold = threshold
        self._offset: float | None = None

    def noticed(self, before: float, after: float) -> bool:
        """A poller saw the offset (wall - monotonic) go from ``before`` to ``after``; True if
        this is news (then it was logged)."""
        known = self._offset if self._offset is not None else before
        if abs(after - known) <= self._threshold:
            return False
        self._offset = after
        log.warning(
            "the wall clock stepped by %+.3f s (NTP's first sync, or someone set it); polls "
            "keep their pace and realign to the new time",
            after - known,
        )
        return True
