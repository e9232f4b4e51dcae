"""Remote commands: what the fleet may ask a gateway to do, over the gateway's own command topic
(off unless the config's ``commands.enabled``).

A command is a JSON object with an ``id`` (chosen by the sender, unique) and a ``command``; its
result goes to the result topic with the same id, ``ok`` true with a ``result`` or false with an
``error`` (a code and a sentence). Nothing a sender writes can crash the gateway or write what
the config does not allow: a malformed body, an unknown command, a retained or replayed
command, a command for another gateway, a point that is not writable, a value outside the
point's limits all get an error result and change nothing.

Commands: ``ping``; ``read-now`` (one device, read now through its driver, not stored);
``buffer-stats``; ``reload`` (the config sent in the body, or the file on disk, validated
first; the switch and the rollback to the last config that reached the broker are the
service's, see :func:`gateway.service.run_gateway`); ``write`` (one point the config marks
``writable``, within its ``min``..``max``, read back).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.buffer import Buffer
from gateway.config.isolated import parse_settings_async, read_settings_async
from gateway.driver import PolledDevice, WritableDevice
from gateway.errors import ConfigError, DeviceError, StorageError, WriteRefused
from gateway.readings import DeviceInfo, PointInfo
from gateway.settings import GatewaySettings
from gateway.upstream.json_dialect import SCHEMA_VERSION, iso_utc_ms, to_json
from gateway.upstream.messages import OutgoingMessage

log = logging.getLogger(__name__)

#: The longest id a sender may choose (it is echoed in the result and remembered).
MAX_ID_LENGTH = 128
#: How long a device read or write of a command may take at most.
DEVICE_TIMEOUT = 30.0
#: The largest config a reload command may carry.
MAX_CONFIG_BYTES = 1_000_000

COMMANDS = ("ping", "read-now", "buffer-stats", "reload", "write")


class CommandFailed(Exception):
    """A command that gets an error result: ``code`` for programs, the message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RecentIds:
    """The ids of the last ``size`` commands, kept across reloads (not across restarts): a
    command seen again is refused, not done twice."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, command_id: str) -> bool:
        """Whether ``command_id`` was seen before; remembers it either way."""
        if command_id in self._ids:
            return True
        self._ids[command_id] = None
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False


@dataclass(frozen=True, slots=True)
class Reply:
    """A command's result message, and what to do once the broker has it (a reload switches
    configs only after its result is out)."""

    message: OutgoingMessage
    then: Callable[[], Awaitable[None]] | None = None


#: Asks the service to switch to a validated config; the command's id goes with it, so the
#: outcome after the switch (or the rollback) is reported under it.
RequestReload = Callable[[GatewaySettings, str], Awaitable[None]]


class CommandHandler:
    """Turns one command message into its result. Owned by the forwarder's session loop."""

    def __init__(
        self,
        *,
        prefix: str,
        gateway_id: str,
        devices: Mapping[str, PolledDevice],
        described: Mapping[str, DeviceInfo],
        buffer: Buffer,
        recent: RecentIds,
        reload: RequestReload | None,
        config_path: Path | None,
        now_ms: Callable[[], int],
    ) -> None:
        self.topic = command_topic(prefix, gateway_id)
        self.result_topic = f"{self.topic}/result"
        self._gateway_id = gateway_id
        self._devices = devices
        self._described = described
        self._buffer = buffer
        self._recent = recent
        self._reload = reload
        self._config_path = config_path
        self._now_ms = now_ms

    def result(
        self, command_id: str | None, command: str | None, outcome: Mapping[str, Any]
    ) -> OutgoingMessage:
        return result_message(
            self.result_topic, self._gateway_id, command_id, command, outcome, self._now_ms()
        )

    async def handle(self, payload: bytes, *, retained: bool = False) -> Reply:
        """The reply to one command message; never raises for anything the sender wrote."""
        command_id: str | None = None
        name: str | None = None
        try:
            body = _parse(payload)
            command_id, name = body["id"], body["command"]
            self._admit(body, retained=retained)
            result, then = await self._run(body)
        except CommandFailed as failed:
            log.info("command %s (%s) refused: %s", name, command_id, failed)
            outcome: dict[str, Any] = {
                "ok": False,
                "error": {"code": failed.code, "message": str(failed)},
            }
            return Reply(self.result(command_id, name, outcome))
        log.info("command %s (%s) done", name, command_id)
        return Reply(self.result(command_id, name, {"ok": True, "result": result}), then)

    def _admit(self, body: Mapping[str, Any], *, retained: bool) -> None:
        """Refuse what must not run at all, whatever the command."""
        if retained:
            raise CommandFailed(
                "retained",
                "retained commands are refused: they would run again on every connection; "
                "publish it without the retain flag",
            )
        if "gateway" in body and body["gateway"] != self._gateway_id:
            raise CommandFailed(
                "wrong_gateway",
                f"this command is for gateway {body['gateway']!r}; this is "
                f"{self._gateway_id!r}: nothing was done",
            )
        if self._recent.seen(body["id"]):
            raise CommandFailed(
                "replayed", f"id {body['id']!r} was used before: a command runs once"
            )

    async def _run(
        self, body: Mapping[str, Any]
    ) -> tuple[dict[str, Any], Callable[[], Awaitable[None]] | None]:
        match body["command"]:
            case "ping":
                return {"pong": True}, None
            case "buffer-stats":
                return await self._buffer_stats(), None
            case "read-now":
                return await self._read_now(_text(body, "device")), None
            case "write":
                return await self._write(body), None
            case "reload":
                return await self._validated_reload(body, str(body["id"]))
            case other:
                raise CommandFailed(
                    "unknown_command",
                    f"unknown command {other!r}; known: {', '.join(COMMANDS)}",
                )

    async def _buffer_stats(self) -> dict[str, Any]:
        try:
            stats = await self._buffer.stats()
        except StorageError as exc:
            raise CommandFailed("buffer_failing", f"the buffer cannot be read: {exc}") from exc
        oldest = stats.oldest_read_at_ms
        return {
            "waiting": stats.waiting,
            "oldest_ts": None if oldest is None else iso_utc_ms(oldest),
            "newest_seq": stats.newest_seq,
            "dropped": stats.dropped,
            "quarantined": stats.quarantined,
        }

    def _device(self, name: str) -> PolledDevice:
        device = self._devices.get(name)
        if device is None:
            known = ", ".join(sorted(self._devices)) or "none"
            raise CommandFailed(
                "unknown_device", f"no polled device {name!r}; polled devices: {known}"
            )
        return device

    async def _read_now(self, name: str) -> dict[str, Any]:
        device = self._device(name)
        try:
            async with asyncio.timeout(DEVICE_TIMEOUT):
                reading = await device.read()
        except (DeviceError, TimeoutError) as exc:
            raise CommandFailed("device_error", f"{name}: {exc or 'no answer'}") from exc
        return {
            "device": name,
            "ts": iso_utc_ms(reading.read_at_ms),
            "quality": str(reading.quality),
            "values": {point.name: point.value for point in reading.values},
            "units": {point.name: point.unit for point in reading.values},
        }

    async def _write(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name, point_name = _text(body, "device"), _text(body, "point")
        value = body.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandFailed("malformed", "write needs a number in 'value'")
        device = self._device(name)
        low, high = _writable_limits(self._described.get(name), name, point_name)
        if not low <= value <= high:
            raise CommandFailed(
                "out_of_limits",
                f"{name}.{point_name}: {value!r} is outside its limits {low:g}..{high:g}; "
                "nothing was written",
            )
        if not isinstance(device, WritableDevice):
            raise CommandFailed("not_writable", f"{name}: its driver cannot write")
        try:
            async with asyncio.timeout(DEVICE_TIMEOUT):
                read_back = await device.write(point_name, value)
        except WriteRefused as exc:
            raise CommandFailed("not_writable", str(exc)) from exc
        except (DeviceError, TimeoutError) as exc:
            raise CommandFailed("device_error", f"{name}: {exc or 'no answer'}") from exc
        return {"device": name, "point": point_name, "written": value, "read_back": read_back}

    async def _validated_reload(
        self, body: Mapping[str, Any], command_id: str
    ) -> tuple[dict[str, Any], Callable[[], Awaitable[None]]]:
        if self._reload is None:
            raise CommandFailed("not_supported", "this gateway cannot reload (no config file)")
        text = body.get("config")
        try:
            if text is None:
                if self._config_path is None:
                    raise CommandFailed(
                        "malformed", "no config file to reload: send the config in 'config'"
                    )
                config = await read_settings_async(self._config_path)
            elif isinstance(text, str) and len(text.encode()) <= MAX_CONFIG_BYTES:
                source = f"the config of command {command_id}"
                config = await parse_settings_async(text, source=source)
            else:
                raise CommandFailed(
                    "malformed", f"'config' is the YAML text, at most {MAX_CONFIG_BYTES} bytes"
                )
        except ConfigError as exc:
            raise CommandFailed(
                "invalid_config",
                "the config is not valid, the running one stays:\n" + "\n".join(exc.problems),
            ) from exc
        reload = self._reload

        async def switch() -> None:
            await reload(config, command_id)

        return {"config": config.config_hash, "state": "reloading"}, switch


def command_topic(prefix: str, gateway_id: str) -> str:
    """The one topic a gateway takes commands on; results go to ``<it>/result``."""
    return f"{prefix}/{gateway_id}/commands"


def result_message(  # noqa: PLR0917 - the fields of the message
    topic: str,
    gateway_id: str,
    command_id: str | None,
    command: str | None,
    outcome: Mapping[str, Any],
    now_ms: int,
) -> OutgoingMessage:
    """A command's result: ``outcome`` is ``ok`` and ``result`` or ``error`` (see
    docs/command-result.schema.json)."""
    message: dict[str, object] = {
        "schema": SCHEMA_VERSION,
        "gateway": gateway_id,
        "id": command_id,
        "command": command,
        "ts": iso_utc_ms(now_ms),
        **outcome,
    }
    return OutgoingMessage(topic, to_json(message))


def _parse(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandFailed("malformed", f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise CommandFailed("malformed", "the body is a JSON object with an id and a command")
    command_id = body.get("id")
    if not isinstance(command_id, str) or not 1 <= len(command_id) <= MAX_ID_LENGTH:
        raise CommandFailed(
            "malformed", f"'id' is a string of 1 to {MAX_ID_LENGTH} characters, unique"
        )
    if not isinstance(body.get("command"), str):
        raise CommandFailed("malformed", f"'command' is one of: {', '.join(COMMANDS)}")
    return body


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise CommandFailed("malformed", f"{body.get('command')} needs {key!r} (a name)")
    return value


def _writable_limits(info: DeviceInfo | None, device: str, point: str) -> tuple[float, float]:
    """The config's min and max of a writable point; refused if it is not writable."""
    configured: dict[str, PointInfo] = {p.name: p for p in info.points} if info else {}
    found = configured.get(point)
    if found is None or not found.writable or found.minimum is None or found.maximum is None:
        why = "has no such point" if found is None else "does not mark it writable"
        raise CommandFailed(
            "not_writable",
            f"{device}.{point} is not writable: the config {why} (writable: true with min "
            "and max); nothing was written",
        )
    return found.minimum, found.maximum
