"""Every message the gateway publishes, checked against the committed JSON Schemas in docs/.

:class:`CheckedFleet` is the fleet subscriber the broker tests use: it validates each message
it receives as it arrives (by its topic: an allow-list, so a topic without a schema is a
failure too) and fails the test at its end if any did not validate.
"""

from __future__ import annotations

import json
from functools import cache

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
    """A fleet subscriber that validates every message it received against docs/ when it
    stops. Not in paho's callback: a subscriber slowed by validation changes the timing of
    what the tests measure (acknowledgements, a backlog draining)."""

    def invalid(self) -> list[str]:
        """One line per message that does not match its schema."""
        found = []
        for message in self.messages():
            try:
                validate(message.topic, message.payload)
            except (jsonschema.ValidationError, ValueError, AssertionError) as exc:
                found.append(f"{message.topic}: {exc}".splitlines()[0])
        return found

    def stop(self) -> None:
        super().stop()
        invalid = self.invalid()
        assert not invalid, f"messages that do not match docs/*.schema.json: {invalid}"


def dialect(prefix: str = "fieldgate", gateway_id: str = "gw") -> JsonDialect:
    """The JSON dialect as a test gateway that configures no devices speaks it."""
    return JsonDialect(
        prefix, gateway_id, GatewayInfo("0.0-test", "sha256:" + "0" * 64, 1764072000000)
    )


__all__ = ["CheckedFleet", "Received", "dialect", "validate", "validator"]
