"""Bind keys of encrypted sensors, read from a file or a systemd credential when the bus opens.
No key ever goes into a log line or an exception message: only where it was to be found."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from drivers.ble.settings import BleDeviceSettings
from gateway.errors import DeviceProtocolError

#: BTHome and MiBeacon v4/v5 keys are 16 bytes; older MiBeacon (v2/v3) keys 12.
_KEY = re.compile(r"[0-9A-Fa-f]{24}|[0-9A-Fa-f]{32}")


def bind_key_of(
    device: BleDeviceSettings, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """The device's bind key, or None if it has none configured. Raises
    :class:`DeviceProtocolError` naming the file (never the key) when it cannot be used."""
    where = _where(device, os.environ if environ is None else environ)
    if where is None:
        return None
    path, key = where
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise DeviceProtocolError(
            f"cannot read the bind key from {path} ({key}): {reason}"
        ) from None
    if not _KEY.fullmatch(text):
        raise DeviceProtocolError(
            f"the bind key in {path} ({key}) is not 32 (or 24) hex digits on one line"
        )
    return bytes.fromhex(text)


def _where(device: BleDeviceSettings, environ: Mapping[str, str]) -> tuple[Path, str] | None:
    if device.bind_key_file is not None:
        return device.bind_key_file, f"devices.{device.name}.bind_key_file"
    if device.bind_key_credential is None:
        return None
    key = f"devices.{device.name}.bind_key_credential"
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise DeviceProtocolError(
            f"{key} {device.bind_key_credential!r} needs systemd's LoadCredential= (no "
            "$CREDENTIALS_DIRECTORY); or use bind_key_file"
        )
    return Path(directory) / device.bind_key_credential, key
