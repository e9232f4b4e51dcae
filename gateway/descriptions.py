"""Who each device is, for the fleet: the config's :class:`~gateway.readings.DeviceInfo`,
completed at run time by what the device says of itself (a BLE parser's model and name, the
device class of each value), which its driver reports through the sink.

One instance per running config: the sink writes to it, the dialect and Home Assistant
discovery read from it. A device whose description changed is described again (retained)
before its next reading: the dialect compares the description it sent with :meth:`get`'s,
which is a new object exactly when something changed.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.readings import DeviceIdentity, DeviceInfo


class Descriptions:
    def __init__(self, configured: Iterable[DeviceInfo]) -> None:
        self._configured = {device.name: device for device in configured}
        self._current = dict(self._configured)

    def get(self, device: str) -> DeviceInfo | None:
        """The device's description now; ``None`` for a device the config does not have."""
        return self._current.get(device)

    def configured(self) -> tuple[DeviceInfo, ...]:
        """The devices as the config describes them, in its order."""
        return tuple(self._configured.values())

    def identify(self, device: str, identity: DeviceIdentity) -> bool:
        """Take what ``device`` says of itself; True if its description changed. A device the
        config does not have is ignored (a driver never invents devices)."""
        configured = self._configured.get(device)
        if configured is None:
            return False
        described = configured.identified(identity)
        if described == self._current[device]:
            return False
        self._current[device] = described
        return True
