"""A dialect is the wire format upstream: which topic and payload each message has. It is pure
(no I/O, no clock, no paho), so every format is unit-tested without a broker, as the Modbus
decoder is; the forwarder decides when each message is sent.

Sparkplug B, Home Assistant discovery or richer birth metadata are further dialects; the buffer,
the session and the forwarder stay as they are.
"""

from __future__ import annotations

from typing import Protocol

from gateway.events import BufferedEvent
from gateway.readings import BufferedReading
from gateway.upstream.messages import OutgoingMessage

__all__ = ["Dialect", "OutgoingMessage"]


class Dialect(Protocol):
    def will(self) -> OutgoingMessage:
        """Left with the broker on connect; published by the broker if we vanish without a
        goodbye (power cut, network gone, SIGKILL)."""
        ...

    def birth(self) -> OutgoingMessage:
        """Published first on every connection, before any reading."""
        ...

    def reading(self, buffered: BufferedReading, *, historical: bool = False) -> OutgoingMessage:
        """The message for one buffered reading. QoS 1 is what makes delete-on-PUBACK mean
        "the broker has it". ``historical``: it waited out an outage and is sent behind the
        live readings (the dialect decides how the fleet sees that)."""
        ...

    def event(self, buffered: BufferedEvent) -> OutgoingMessage:
        """The message for one gateway event (a dropped range, the buffer failing or working
        again, a damaged buffer file replaced)."""
        ...

    def goodbye(self) -> OutgoingMessage:
        """Published on a clean shutdown: the broker does not send the will after a DISCONNECT."""
        ...
