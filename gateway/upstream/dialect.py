"""A dialect is the wire format upstream: which topic and payload each message has. It is pure
(no I/O, no clock, no paho), so every format is unit-tested without a broker, as the Modbus
decoder is; the forwarder decides when each message is sent.

Sparkplug B would be a further dialect; the buffer, the session and the forwarder stay as they
are.
"""

from __future__ import annotations

from typing import Protocol

from gateway.events import BufferedEvent
from gateway.health import HealthReport
from gateway.readings import BufferedReading
from gateway.upstream.messages import OutgoingMessage

__all__ = ["Dialect", "OutgoingMessage"]


class Dialect(Protocol):
    def will(self) -> OutgoingMessage:
        """Left with the broker on connect; published by the broker if we vanish without a
        goodbye (power cut, network gone, SIGKILL)."""
        ...

    def birth(self) -> OutgoingMessage:
        """Published first on every connection, before any reading (a new session starts)."""
        ...

    def description(self, buffered: BufferedReading) -> OutgoingMessage | None:
        """What the fleet must have before this reading to read it (a retained description of
        the device and its points), if this session has not sent it yet; else ``None``.
        Descriptions are sent again after each :meth:`birth`."""
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

    def health(self, report: HealthReport) -> OutgoingMessage:
        """The periodic health message: per device, the buffer, the uplink."""
        ...

    def goodbye(self) -> OutgoingMessage:
        """Published on a clean shutdown: the broker does not send the will after a DISCONNECT."""
        ...
