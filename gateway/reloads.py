"""Switching configs while running: which config runs next and why (a SIGHUP, a remote
``reload`` command, or the rollback of a reload whose new config never reached the broker),
and the watch that decides the rollback.

A reload asked for while the uplink works must leave it working: the new config gets
``gateway.reload_rollback`` to connect, else the last config that did connect runs again. The
command that asked for the reload hears the outcome under its id, from the config that runs
after it (the new one once connected, or the old one after the rollback).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.commands import command_topic, result_message
from gateway.health import HealthRegistry
from gateway.settings import GatewaySettings
from gateway.upstream.messages import OutgoingMessage

log = logging.getLogger(__name__)

#: How often the watch looks whether the new config's uplink connected.
_WATCH_EVERY = 0.2


@dataclass(frozen=True, slots=True)
class Switch:
    """A config to run, and why."""

    config: GatewaySettings
    #: The remote command that asked for it (its outcome is reported under this id).
    command_id: str | None = None
    #: Where to go back to when this config does not connect in time (None: nowhere).
    fallback: GatewaySettings | None = None
    #: Set on a rollback: why the reload was undone.
    rolled_back: str | None = None

    def outcome(self, now_ms: int) -> Sequence[OutgoingMessage]:
        """What to publish once this config is connected: the asking command's final result."""
        if self.command_id is None:
            return ()
        config = self.config
        topic = command_topic(config.mqtt.topic_prefix, config.gateway.id) + "/result"
        if self.rolled_back is not None:
            outcome: dict[str, object] = {
                "ok": False,
                "error": {"code": "rolled_back", "message": self.rolled_back},
            }
        else:
            outcome = {"ok": True, "result": {"state": "reloaded", "config": config.config_hash}}
        return (
            result_message(topic, config.gateway.id, self.command_id, "reload", outcome, now_ms),
        )


class Switches:
    """Switches asked for while a config runs (remote reloads, rollbacks); the service's loop
    takes them and ends the running config's parts to make the switch."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self._wanted: Switch | None = None

    def ask(self, switch: Switch) -> None:
        self._wanted = switch
        self.asked.set()

    def take(self) -> Switch | None:
        wanted, self._wanted = self._wanted, None
        self.asked.clear()
        return wanted


async def watch_for_rollback(
    switch: Switch, health: HealthRegistry, clock: Clock, switches: Switches
) -> None:
    """Ask for the rollback if ``switch``'s config has not connected to its broker within
    ``gateway.reload_rollback``; return as soon as it has."""
    fallback = switch.fallback
    if fallback is None:
        return
    before = health.uplink_counts.connects
    bound = switch.config.gateway.reload_rollback
    deadline = clock.monotonic() + bound
    while health.uplink_counts.connects == before:
        if clock.monotonic() >= deadline:
            mqtt = switch.config.mqtt
            why = (
                f"the new config did not reach its broker {mqtt.host}:{mqtt.port} within "
                f"{bound:g}s ({health.uplink.last_error or 'no connection'}); the previous "
                "config runs again"
            )
            log.error("reload undone: %s", why)
            switches.ask(Switch(fallback, switch.command_id, rolled_back=why))
            return
        await clock.sleep(_WATCH_EVERY)


__all__ = ["Switch", "Switches", "watch_for_rollback"]
