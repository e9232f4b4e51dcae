"""Device health as state, not log lines: each device is up or down, and only a change of state
is logged (the failure once, the recovery once), as Home Assistant's update coordinator does."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DeviceHealth:
    device: str
    up: bool | None = None  # None until the first poll has finished
    polls_ok: int = 0
    polls_failed: int = 0
    cycles_skipped: int = 0
    last_error: str | None = None
    last_success_ms: int | None = None

    def succeeded(self, read_at_ms: int) -> None:
        self.polls_ok += 1
        self.last_success_ms = read_at_ms
        if self.up is False:
            log.info("device %s answers again after %s", self.device, self.last_error)
        self.up = True
        self.last_error = None

    def failed(self, error: str) -> None:
        self.polls_failed += 1
        if self.up is not False:
            log.warning("device %s failed: %s (logged once until it recovers)", self.device, error)
        self.up = False
        self.last_error = error

    def skipped(self, cycles: int) -> None:
        if self.cycles_skipped == 0:
            log.warning(
                "device %s: a poll took longer than the interval; cycles are skipped and "
                "counted (lengthen the interval or raise the timeout less)",
                self.device,
            )
        self.cycles_skipped += cycles
