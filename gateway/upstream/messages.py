"""The messages that cross the MQTT session, in both directions: plain data, no I/O, so that
dialects build them without importing paho and the session carries them without knowing what
they mean."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to publish (or to leave as the last will)."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message the broker delivered on one of the session's subscriptions."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
