"""fieldgate's exception tree. Lower-layer errors (pymodbus, paho, sqlite3) are translated into
these at the edge where they happen, so the core only ever handles these types::

    FieldgateError
    ├── ConfigError            the YAML file is not a valid configuration (exit code 78)
    ├── DeviceError            a device could not be read this time; the next poll tries again
    │   ├── DeviceTimeout      the device did not answer in time (absent, unpowered, wrong id)
    │   ├── DeviceUnreachable  no transport to the device (TCP connect refused, port missing)
    │   └── DeviceProtocolError the device answered, but with an exception code or garbage
    ├── StorageError           the local buffer failed (disk full, locked, a row that no longer
    │   │                      decodes); the forwarder reports it and retries
    │   └── StorageDeferred    the disk failed, so the reading waits in memory (not yet durable);
    │                          the buffer writes it when the disk works again
    └── UplinkError            the MQTT session failed; the forwarder reconnects with backoff
        ├── BrokerUnavailable  the broker cannot be reached, sent no CONNACK (or SUBACK or PUBACK
        │                      in time), or the connection was lost
        └── BrokerRefused      the broker answered and said no: CONNACK refused (credentials,
            │                  client id, not authorised); retrying helps only once the broker's
            │                  or our configuration changes
            └── SubscriptionRefused  SUBACK refused a subscription (the broker's ACL)
"""

from __future__ import annotations


class FieldgateError(Exception):
    """Base of every error fieldgate raises on purpose."""


class ConfigError(FieldgateError):
    """The configuration is invalid. ``problems`` holds one line per mistake, each naming the
    file, line and key path, so a technician can fix them all in one pass."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class DeviceError(FieldgateError):
    """A device could not be read this time."""


class DeviceTimeout(DeviceError):
    """The device did not answer in time."""


class DeviceUnreachable(DeviceError):
    """There is no working transport to the device."""


class DeviceProtocolError(DeviceError):
    """The device answered with an exception code or a reply that cannot be decoded."""


class WriteRefused(DeviceError):
    """A write was not sent: the point is not writable, the value is outside its limits or
    its registers cannot hold it. Nothing was written."""


class StorageError(FieldgateError):
    """The local SQLite buffer failed."""


class StorageDeferred(StorageError):
    """The reading was not written: the disk fails. It waits in the buffer's memory queue."""


class UplinkError(FieldgateError):
    """The MQTT session to the broker failed."""


class BrokerUnavailable(UplinkError):
    """The broker cannot be reached, did not answer in time, or the connection was lost."""


class BrokerRefused(UplinkError):
    """The broker refused what we asked for. ``reason`` is the broker's reason as MQTT names it
    (``Not authorized``, ``Bad user name or password`` ...); the message says what to check."""

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class SubscriptionRefused(BrokerRefused):
    """The broker refused a subscription (SUBACK failure code), usually its ACL."""
