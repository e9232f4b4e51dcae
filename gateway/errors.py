"""fieldgate's exception tree. Lower-layer errors (pymodbus, paho, sqlite3) are translated into
these at the edge where they happen, so the core only ever handles these types::

    FieldgateError
    ├── ConfigError            the YAML file is not a valid configuration (exit code 78)
    ├── DeviceError            a device could not be read this time; the next poll tries again
    │   ├── DeviceTimeout      the device did not answer in time (absent, unpowered, wrong id)
    │   ├── DeviceUnreachable  no transport to the device (TCP connect refused, port missing)
    │   └── DeviceProtocolError the device answered, but with an exception code or garbage
    └── StorageError           the local buffer failed (disk full, corrupt file)
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


class StorageError(FieldgateError):
    """The local SQLite buffer failed."""
