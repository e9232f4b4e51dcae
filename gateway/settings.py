"""What the running gateway keeps of its config: plain frozen dataclasses, no pydantic.

A config file is validated by the pydantic models of :mod:`gateway.config` and of each driver's
``config`` module: they know every rule, every error text and the JSON Schema. The running
gateway needs none of that, only the values: importing pydantic, building its validators and
holding the models costs a process about 13 MB for its life, a third of what fieldgate needs at
a hundred meters. So every model names its *settings* class (``settings: ClassVar``), a frozen
dataclass with the same field names holding the validated values (a list becomes a tuple), and
the running process holds only those:

- ``run`` and its reloads validate the file in a short-lived child
  (:mod:`gateway.config.isolated`), which hands the settings over as a tree of plain data
  (:mod:`gateway.config.handover` writes it; :mod:`marshal` carries it);
- :func:`settings_from_tree` builds the settings from that tree here, importing only settings
  modules (this one, ``drivers/*/settings.py``), never pydantic.

Settings modules import no pydantic and no config model; the config models import them (the
enums a file may name live here, so both sides share them).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from gateway.readings import DeviceInfo

#: Packages whose classes a tree may name: a tree never builds anything but our settings.
_OUR_PACKAGES = ("gateway.", "drivers.")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSettings:
    """What every device has, whatever its protocol: the core schedules by these."""

    name: str
    bus: str
    #: Seconds between polls; polls align to the wall clock.
    interval: float

    #: The kind of device, as the fleet sees it in the birth and the device's description.
    kind: ClassVar[str] = "device"

    def info(self) -> DeviceInfo:
        """Who this device is, for the fleet (drivers add their template and points)."""
        return DeviceInfo(self.name, self.bus, type(self).kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class BusSettings:
    """What every bus has: a name devices refer to, and the ``type`` that picks its driver."""

    name: str
    type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySectionSettings:
    id: str
    stop_timeout: float
    reload_rollback: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttTlsSettings:
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    verify_hostname: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    host: str
    port: int
    client_id: str | None
    topic_prefix: str
    keepalive: float
    max_inflight: int
    reconnect_max: float
    protocol: Literal["3.1.1", "5"]
    username: str | None
    password_file: Path | None
    password_credential: str | None
    tls: MqttTlsSettings | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferSettings:
    path: Path
    max_size: int
    max_age: float
    commit_delay: float
    memory_queue: int
    replay_rate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSettings:
    listen: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSettings:
    interval: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandsSettings:
    enabled: bool
    remember: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HomeAssistantSettings:
    discovery: bool
    prefix: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """A whole config, as the running gateway holds it."""

    gateway: GatewaySectionSettings
    mqtt: MqttSettings
    buffer: BufferSettings
    metrics: MetricsSettings | None
    health: HealthSettings
    commands: CommandsSettings
    homeassistant: HomeAssistantSettings
    buses: tuple[BusSettings, ...]
    devices: tuple[DeviceSettings, ...]
    #: ``sha256:<hex>`` of the config as validated (see GatewayConfig.config_hash): the
    #: fleet sees which config a gateway runs. Worked out where the models are.
    config_hash: str = ""

    def devices_on(self, bus_name: str) -> list[DeviceSettings]:
        return [device for device in self.devices if device.bus == bus_name]


#: What a tree is: plain data only (what :mod:`marshal` carries), each object tagged.
#: ``("S", "module:Class", ((field, tree), ...))`` settings; ``("E", "module:Class", value)``
#: an enum member; ``("P", text)`` a path; ``("T", (tree, ...))`` a tuple (a list of the model);
#: ``("D", ((key, tree), ...))`` a dict; str, int, float, bool and None as they are.
Tree = Any


def settings_from_tree(tree: Tree) -> GatewaySettings:
    """The settings a tree describes (see :mod:`gateway.config.handover`). A part the tree
    holds more than once, as one object (the 30 points of 100 meters of one kind: the models
    are shared while validating, and marshal keeps what is shared), becomes one object here
    too. Raises ``ValueError`` or ``TypeError`` for a tree that is not one."""
    settings = build_settings(tree)
    if not isinstance(settings, GatewaySettings):
        raise TypeError(f"not a whole config: {type(settings).__name__}")
    return settings


def build_settings(tree: Tree) -> Any:
    """What any tree describes: a whole config's, one bus's or one device's settings."""
    return _Builder().build(tree)


_UNBUILT = object()


class _Builder:
    def __init__(self) -> None:
        # By identity, not equality: equal is not the same (1 == 1.0 == True), and the tree
        # says what is the same by holding it once.
        self._built: dict[int, Any] = {}
        self._classes: dict[str, type] = {}

    def build(self, tree: Tree) -> Any:
        if type(tree) is not tuple:
            if tree is None or type(tree) in (str, int, float, bool):
                return tree
            raise ValueError(f"not a settings tree: {type(tree).__name__}")
        # The whole tree outlives the build, so no id is reused meanwhile.
        built = self._built.get(id(tree), _UNBUILT)
        if built is _UNBUILT:
            built = self._built[id(tree)] = self._build_tagged(tree)
        return built

    def _build_tagged(self, tree: tuple[Any, ...]) -> Any:
        tag = tree[0] if tree else None
        if tag == "S" and len(tree) == 3:
            cls = self._class(tree[1])
            if not dataclasses.is_dataclass(cls):
                raise ValueError(f"{tree[1]} is not a settings class")
            return cls(**{str(name): self.build(value) for name, value in tree[2]})
        if tag == "E" and len(tree) == 3:
            cls = self._class(tree[1])
            if not issubclass(cls, enum.Enum):
                raise ValueError(f"{tree[1]} is not an enum")
            return cls(tree[2])
        if tag == "P" and len(tree) == 2:
            return Path(tree[1])
        if tag == "T" and len(tree) == 2:
            return tuple(self.build(item) for item in tree[1])
        if tag == "D" and len(tree) == 2:
            return {self.build(key): self.build(value) for key, value in tree[1]}
        raise ValueError(f"not a settings tree: {tag!r}")

    def _class(self, name: object) -> type:
        if not isinstance(name, str):
            raise TypeError(f"not a class name: {name!r}")
        try:
            return self._classes[name]
        except KeyError:
            pass
        module_name, _, qualname = name.partition(":")
        if not module_name.startswith(_OUR_PACKAGES) or not qualname:
            raise ValueError(f"not one of our classes: {name}")
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
        if not isinstance(found, type):
            raise TypeError(f"not a class: {name}")
        self._classes[name] = found
        return found
