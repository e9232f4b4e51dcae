"""The whole configuration file as one typed model."""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError, core_schema

from drivers.catalog import BusConfig, DeviceConfig, device_model_of
from gateway.config.fields import (
    BackoffCap,
    BusBase,
    DatabasePath,
    DeviceBase,
    Duration,
    DurationBounds,
    HostName,
    IpAddress,
    LocalPath,
    Name,
    PeriodOrOff,
    Size,
    StrictModel,
    TopicPrefix,
)
from gateway.settings import (
    BufferSettings,
    CommandsSettings,
    GatewaySectionSettings,
    GatewaySettings,
    HealthSettings,
    HomeAssistantSettings,
    MetricsSettings,
    MqttSettings,
    MqttTlsSettings,
)


class GatewaySection(StrictModel):
    settings: ClassVar[type[Any]] = GatewaySectionSettings

    id: Name = Field(description="This gateway's id: unique in the fleet, a level of every topic")
    stop_timeout: Annotated[Duration, DurationBounds(at_most=3600.0)] = Field(
        default=5.0,
        description=(
            "On SIGTERM, the gateway ends within this long, everything stored kept; keep it "
            "shorter than systemd's TimeoutStopSec"
        ),
    )
    reload_rollback: Annotated[Duration, DurationBounds(at_least=1.0, at_most=3600.0)] = Field(
        default=60.0,
        description=(
            "A reload (SIGHUP or a remote command) made while the broker was reachable whose "
            "new config does not reach it within this long is undone: the last config that "
            "did runs again"
        ),
    )


class MqttTls(StrictModel):
    """TLS to the broker. The broker's certificate chain is always verified."""

    settings: ClassVar[type[Any]] = MqttTlsSettings

    ca_file: LocalPath | None = Field(
        default=None, description="CA certificate(s) (PEM); default: the system's CA store"
    )
    cert_file: LocalPath | None = Field(
        default=None, description="Client certificate (PEM), for brokers that want mutual TLS"
    )
    key_file: LocalPath | None = Field(default=None, description="The client certificate's key")
    verify_hostname: bool = Field(
        default=True,
        description="Check that the certificate names mqtt.host; switch off for lab use only",
    )

    @model_validator(mode="after")
    def _certificate_with_its_key(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(StrictModel):
    """The upstream broker."""

    settings: ClassVar[type[Any]] = MqttSettings

    host: HostName = Field(description="Broker host name or IP address")
    port: int = Field(default=1883, ge=1, le=65535)
    # Letters, digits, '_', '-', '.': the characters every broker takes in a client id.
    client_id: Name | None = Field(
        default=None, description="MQTT client id; default fieldgate-<gateway id>"
    )
    topic_prefix: TopicPrefix = Field(
        default="fieldgate",
        description="First topic level(s); topics are <prefix>/<gateway id>/...",
    )
    keepalive: Annotated[
        Duration,
        DurationBounds(
            at_least=1.0,
            at_most=65535.0,
            reason="MQTT sends it as a 16-bit number of whole seconds, and 0 turns it off",
        ),
    ] = Field(default=30.0, description="MQTT keepalive interval")
    max_inflight: int = Field(
        default=100, ge=1, le=65535, description="Messages sent but not yet acknowledged (PUBACK)"
    )
    reconnect_max: BackoffCap = Field(
        default=60.0, description="Longest wait between reconnect attempts (backoff cap)"
    )
    protocol: Literal["3.1.1", "5"] = Field(default="3.1.1", description="MQTT version")
    username: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[^\x00]+$")
    # No inline password: a config file is copied, mailed and pasted into tickets.
    password_file: LocalPath | None = Field(
        default=None, description="File holding the broker password (one line)"
    )
    password_credential: Name | None = Field(
        default=None,
        description="Name of a systemd credential (LoadCredential=) holding the password",
    )
    tls: MqttTls | None = Field(default=None, description="TLS to the broker (port 8883, often)")

    @model_validator(mode="after")
    def _password_from_one_place(self) -> MqttConfig:
        if self.password_file is not None and self.password_credential is not None:
            raise ValueError("give password_file or password_credential, not both")
        if (self.password_file or self.password_credential) and self.username is None:
            raise ValueError("a password needs a username: add mqtt.username")
        return self


class BufferConfig(StrictModel):
    """The local store-and-forward buffer."""

    settings: ClassVar[type[Any]] = BufferSettings

    path: DatabasePath = Field(
        default=Path("/var/lib/fieldgate/buffer.db"), description="SQLite file of the buffer"
    )
    max_size: Size = Field(default=512 * 10**6, description="Largest the buffer may grow")
    max_age: Duration = Field(default=30 * 86400.0, description="Oldest reading kept")
    commit_delay: Annotated[Duration, DurationBounds(at_most=1.0)] = Field(
        default=0.01,
        description=(
            "Group commit: readings submitted within this long of the first go to disk in one "
            "transaction (one fsync); a poll counts as done when its group is on disk"
        ),
    )
    memory_queue: int = Field(
        default=10_000,
        ge=0,
        description=(
            "Readings held in memory while the disk fails (full, read-only, locked); beyond "
            "this the oldest are dropped, counted and reported"
        ),
    )
    replay_rate: float = Field(
        default=6000.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Messages per second at most for the backlog after an outage (sent behind live "
            "readings, marked historical); 0 for no limit"
        ),
    )


class _BusChosen(dict[str, Any]):
    """A device's keys as written, with the model its bus reaches; the discriminator of the
    device union reads the model from here, since no key of the device names its kind."""

    __slots__ = ("model",)

    def __init__(self, keys: dict[str, Any], model: type[DeviceBase]) -> None:
        super().__init__(keys)
        self.model = model


def _device_tag(device: Any) -> str | None:
    # Tags are class names (see drivers.catalog.DeviceConfig).
    if isinstance(device, _BusChosen):
        return device.model.__name__
    if isinstance(device, DeviceBase):
        return type(device).__name__
    return None


class MetricsConfig(StrictModel):
    """Prometheus metrics over HTTP (GET /metrics)."""

    settings: ClassVar[type[Any]] = MetricsSettings

    listen: IpAddress = Field(
        default="127.0.0.1",
        description="Address to listen on: localhost by default; 0.0.0.0 exposes it to the LAN",
    )
    port: int = Field(default=9464, ge=1, le=65535)


class HealthConfig(StrictModel):
    """The periodic health message on <prefix>/<gateway>/health (retained)."""

    settings: ClassVar[type[Any]] = HealthSettings

    interval: PeriodOrOff = Field(
        default=60.0,
        description="How often to publish it (and once on every connection); 0 turns it off",
    )


class CommandsConfig(StrictModel):
    """Remote commands on <prefix>/<gateway>/commands (results on .../commands/result)."""

    settings: ClassVar[type[Any]] = CommandsSettings

    enabled: bool = Field(
        default=False,
        description="Take remote commands (ping, read-now, buffer-stats, reload, write); off "
        "unless true. The gateway subscribes only to its own command topic",
    )
    remember: int = Field(
        default=1000,
        ge=10,
        le=100_000,
        description="Command ids remembered to refuse a replay (the oldest are forgotten)",
    )


class HomeAssistantConfig(StrictModel):
    """Home Assistant MQTT discovery: a sensor per point, grouped by device."""

    settings: ClassVar[type[Any]] = HomeAssistantSettings

    discovery: bool = Field(default=False, description="Announce every point to Home Assistant")
    prefix: TopicPrefix = Field(
        default="homeassistant", description="Home Assistant's discovery prefix"
    )


class GatewayConfig(StrictModel):
    """A fieldgate configuration file."""

    settings: ClassVar[type[Any]] = GatewaySettings

    gateway: GatewaySection
    mqtt: MqttConfig
    buffer: BufferConfig = BufferConfig()
    metrics: MetricsConfig | None = Field(
        default=None, description="A Prometheus endpoint; none unless this section is given"
    )
    health: HealthConfig = HealthConfig()
    commands: CommandsConfig = CommandsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    buses: list[BusConfig] = Field(min_length=1)
    devices: list[
        Annotated[
            DeviceConfig,
            Discriminator(
                _device_tag,
                custom_error_type="device_not_mapping",
                custom_error_message="a device is a mapping of keys: name, bus, interval and "
                "those of its bus's kind",
            ),
        ]
    ] = Field(min_length=1)

    @model_validator(mode="wrap")
    @classmethod
    def _choose_device_models(
        cls, data: Any, handler: ModelWrapValidatorHandler[GatewayConfig]
    ) -> GatewayConfig:
        """Validate each device with the model of the bus it names, chosen from the bus's
        ``type`` before validating: a typo is then one error of that kind of device, never one
        per kind. A device whose bus cannot be found gets one line about its ``bus:`` instead."""
        if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
            return handler(data)
        models = _device_models_by_bus(data.get("buses"))
        devices: list[Any] = []
        unchosen: dict[int, InitErrorDetails | None] = {}
        for index, device in enumerate(data["devices"]):
            if isinstance(device, dict):
                chosen = _choose(index, device, models)
                if isinstance(chosen, type):
                    devices.append(_BusChosen(device, chosen))
                    continue
                unchosen[index] = chosen
            devices.append(device)
        try:
            return handler({**data, "devices": devices})
        except ValidationError as exc:
            if not unchosen:
                raise
            # Each unchosen device failed the union with "no tag": say why instead.
            raise _replaced(exc, unchosen) from None

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
                # Only a config built in code gets here: a file's device whose bus is not
                # defined is already refused while validating (see _choose).
                problems.append((("devices", index, "bus"), _undefined_bus(device.bus, buses)))
            elif not isinstance(device, bus.device_model):
                problems.append(
                    (
                        ("devices", index, "bus"),
                        f"bus {bus.name!r} is a {bus.type} bus and cannot reach this kind "
                        "of device",
                    )
                )
            elif (why := bus.cannot_reach(device)) is not None:
                problems.append((("devices", index, "bus"), why))
        return problems

    def devices_on(self, bus_name: str) -> list[DeviceConfig]:
        return [device for device in self.devices if device.bus == bus_name]

    def config_hash(self) -> str:
        """``sha256:<hex>`` of the config as validated (defaults filled in, keys sorted), so
        two files that mean the same config hash alike and the fleet sees which config a
        gateway runs. A config holds no secret inline; where the password is read from is
        left out too."""
        digest = hashlib.sha256()
        for chunk in self._normalised_json():
            digest.update(chunk.encode())
        return "sha256:" + digest.hexdigest()

    def _normalised_json(self) -> Iterator[str]:
        """The text of ``json.dumps(<the config dumped as JSON data>, sort_keys=True,
        separators=(",", ":"))``, a section (and each bus and device) at a time: the whole
        config as one tree of dicts is megabytes at a hundred devices, and would be the
        process's high-water mark of memory, for a moment, at every start."""
        encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
        opening = "{"
        for name in sorted(type(self).model_fields):
            yield f"{opening}{encode(name)}:"
            opening = ","
            value = getattr(self, name)
            if isinstance(value, list):
                yield "["
                for index, item in enumerate(value):
                    yield ("," if index else "") + encode(item.model_dump(mode="json"))
                yield "]"
            else:
                section = self.model_dump(mode="json", include={name}, exclude=_UNHASHED)
                yield encode(section[name])
        yield "}"


#: Where the password is read from: not what the config means.
_UNHASHED = {"mqtt": {"password_file", "password_credential"}}


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


def _device_models_by_bus(buses: Any) -> dict[str, type[DeviceBase] | None]:
    """Bus name -> the device model its ``type`` reaches (``None`` when the type is missing or
    unknown), from the buses as written, which may themselves be wrong."""
    models: dict[str, type[DeviceBase] | None] = {}
    for bus in buses if isinstance(buses, list) else []:
        name: object
        model: type[DeviceBase] | None
        if isinstance(bus, BusBase):
            name, model = bus.name, type(bus).device_model
        elif isinstance(bus, dict):
            name, model = bus.get("name"), device_model_of(bus.get("type"))
        else:
            continue
        if isinstance(name, str):
            # Of two buses with one name the last wins, as in reference_problems, which also
            # reports the duplicate.
            models[name] = model
    return models


def _choose(
    index: int, device: dict[str, Any], models: dict[str, type[DeviceBase] | None]
) -> type[DeviceBase] | InitErrorDetails | None:
    """The model for ``device``, or the one error that says why there is none, or ``None``
    when the error is already another's (a bus with a bad type, no buses at all)."""
    loc = ("devices", index, "bus")
    if "bus" not in device:
        return InitErrorDetails(type="missing", loc=loc, input=device)
    bus = device["bus"]
    if not isinstance(bus, str):
        return InitErrorDetails(type="string_type", loc=loc, input=bus)
    if bus in models:
        return models[bus]
    if not models:
        return None
    message = _undefined_bus(bus, models)
    return InitErrorDetails(
        type=PydanticCustomError("bus_not_defined", "{message}", {"message": message}),
        loc=loc,
        input=bus,
    )


def _undefined_bus(name: str, defined: typing.Iterable[str]) -> str:
    return (
        f"bus {name!r} is not defined; defined buses: {', '.join(defined)}. "
        "Add it under `buses:` or fix the name"
    )


_KNOWN_ERROR_TYPES = frozenset(typing.get_args(core_schema.ErrorType))


def _replaced(
    exc: ValidationError, unchosen: dict[int, InitErrorDetails | None]
) -> ValidationError:
    """``exc`` with the union's error for each unchosen device swapped for the reason (or
    dropped when another error already says it), in place so the file's order is kept."""
    errors: list[InitErrorDetails] = []
    for error in exc.errors():
        loc = error["loc"]
        if len(loc) == 2 and loc[0] == "devices" and isinstance(loc[1], int) and loc[1] in unchosen:
            reason = unchosen[loc[1]]
            if reason is not None:
                errors.append(reason)
        else:
            errors.append(_init_details(error))
    return ValidationError.from_exception_data(exc.title, errors)


def _init_details(error: ErrorDetails) -> InitErrorDetails:
    """An error as it was raised, to raise it again among others."""
    kind = error["type"]
    if kind not in _KNOWN_ERROR_TYPES:
        # A custom error's message is already formatted; without a context it stays as it is.
        return InitErrorDetails(
            type=PydanticCustomError(kind, error["msg"]), loc=error["loc"], input=error["input"]
        )
    details = InitErrorDetails(type=kind, loc=error["loc"], input=error["input"])
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details
