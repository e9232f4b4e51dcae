"""The whole configuration file as one typed model."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from drivers.catalog import BusConfig, DeviceConfig
from gateway.config.fields import Duration, Name, Size, StrictModel


class GatewaySection(StrictModel):
    id: Name = Field(description="This gateway's id: unique in the fleet, a level of every topic")


class MqttConfig(StrictModel):
    """The upstream broker."""

    host: str = Field(min_length=1, description="Broker host name or IP address")
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(
        default=None, max_length=64, description="MQTT client id; default fieldgate-<gateway id>"
    )
    topic_prefix: str = Field(
        default="fieldgate",
        pattern=r"^[^#+]+$",
        description="First topic level(s); topics are <prefix>/<gateway id>/...",
    )
    keepalive: Duration = Field(default=30.0, description="MQTT keepalive interval")
    max_inflight: int = Field(
        default=100, ge=1, le=65535, description="Messages sent but not yet acknowledged (PUBACK)"
    )
    reconnect_max: Duration = Field(
        default=60.0, description="Longest wait between reconnect attempts (backoff cap)"
    )


class BufferConfig(StrictModel):
    """The local store-and-forward buffer."""

    path: Path = Field(
        default=Path("/var/lib/fieldgate/buffer.db"), description="SQLite file of the buffer"
    )
    max_size: Size = Field(default=512 * 10**6, description="Largest the buffer may grow")
    max_age: Duration = Field(default=30 * 86400.0, description="Oldest reading kept")


class GatewayConfig(StrictModel):
    """A fieldgate configuration file."""

    gateway: GatewaySection
    mqtt: MqttConfig
    buffer: BufferConfig = BufferConfig()
    buses: list[BusConfig] = Field(min_length=1)
    devices: list[DeviceConfig] = Field(min_length=1)

    def reference_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Mistakes no single field shows: duplicate names and dangling references, each with
        the key path it belongs to, so the loader can name the line."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        problems += _duplicates("buses", [bus.name for bus in self.buses])
        problems += _duplicates("devices", [device.name for device in self.devices])
        buses = {bus.name: bus for bus in self.buses}
        for index, device in enumerate(self.devices):
            bus = buses.get(device.bus)
            if bus is None:
                problems.append(
                    (
                        ("devices", index, "bus"),
                        f"bus {device.bus!r} is not defined; defined buses: "
                        f"{', '.join(buses)}. Add it under `buses:` or fix the name",
                    )
                )
            elif not isinstance(device, bus.device_model):
                problems.append(
                    (
                        ("devices", index, "bus"),
                        f"bus {bus.name!r} is a {bus.type} bus and cannot reach this kind "
                        "of device",
                    )
                )
        return problems

    def devices_on(self, bus_name: str) -> list[DeviceConfig]:
        return [device for device in self.devices if device.bus == bus_name]


def _duplicates(section: str, names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
    first_index: dict[str, int] = {}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for index, name in enumerate(names):
        if name in first_index:
            problems.append(
                (
                    (section, index, "name"),
                    f"name {name!r} is already used by {section}[{first_index[name]}]; "
                    "names must be unique",
                )
            )
        else:
            first_index[name] = index
    return problems
