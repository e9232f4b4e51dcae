"""Every message the gateway publishes, checked against the committed JSON Schemas in docs/.

:class:`CheckedFleet` is the fleet subscriber the broker tests use: it validates each message
it receives as it arrives (by its topic: an allow-list, so a topic without a schema is a
failure too) and fails the test at its end if any did not validate.
"""

from __future__ import annotations

import json
import threading
from functools import cache
from typing import Any

import jsonschema
from fieldgate_sim.fleet import FleetSubscriber, Received

from gateway.upstream.json_dialect import GatewayInfo, JsonDialect
from tests.harness import REPO

#: The last topic level(s) of each message kind the gateway publishes -> its schema in docs/.
SCHEMA_OF_TOPIC_END = {
    "status": "status",
    "events": "event",
    "health": "health",
    "description": "description",
    "reading": "payload",
    "result": "command-result",
}


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((REPO / "docs" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_for(topic: str) -> str | None:
    """The schema of a gateway topic, None for a topic the tests themselves publish to (a
    command) or Home Assistant's discovery (checked by tests/test_homeassistant.py)."""
    levels = topic.split("/")
    if "commands" in levels and levels[-1] != "result":
        return None
    if levels[0] == "homeassistant":
        return None
    return SCHEMA_OF_TOPIC_END.get(levels[-1], "no schema for this topic")


def validate(topic: str, payload: bytes) -> None:
    """Raise if the message is not what its schema in docs/ says."""
    name = schema_for(topic)
    if name is None:
        return
    assert name in SCHEMA_OF_TOPIC_END.values(), f"{topic}: {name}"
    if topic.endswith("/description") and not payload:
        return  # a retained description cleared
    validator(name).validate(json.loads(payload))


class CheckedFleet(FleetSubscriber):
    """A fleet subscriber that validates every message it receives against docs/."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._invalid_lock = threading.Lock()
        self.invalid: list[str] = []
        self.validated = 0

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        super()._on_message(client, userdata, message)
        try:
            validate(message.topic, bytes(message.payload))
        except Exception as exc:  # any failure is the test's; paho's thread must go on
            with self._invalid_lock:
                self.invalid.append(f"{message.topic}: {exc}".splitlines()[0])
        else:
            with self._invalid_lock:
                self.validated += 1

    def stop(self) -> None:
        super().stop()
        assert not self.invalid, f"messages that do not match docs/*.schema.json: {self.invalid}"


def dialect(prefix: str = "fieldgate", gateway_id: str = "gw") -> JsonDialect:
    """The JSON dialect as a test gateway that configures no devices speaks it."""
    return JsonDialect(
        prefix, gateway_id, GatewayInfo("0.0-test", "sha256:" + "0" * 64, 1764072000000)
    )


__all__ = ["CheckedFleet", "Received", "dialect", "validate", "validator"]
