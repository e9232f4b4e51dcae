"""Hypothesis strategies for the instances of a JSON Schema, for the keywords the config's schema
uses: what hypothesis-jsonschema does, for a subset. (hypothesis-jsonschema 0.23.1, its latest
release, fails on every object schema with the Hypothesis this project locks: it drives
Hypothesis internals, ``many.more()``, that no longer exist.)

A keyword outside the known set is an error, not skipped: a schema that grows a feature must get
it here too, or the instances would quietly stop covering it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

#: Keywords that say nothing about which values are valid. ``discriminator`` (OpenAPI's) only
#: repeats what ``oneOf`` and each branch's ``const`` say.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$defs", "discriminator"}
)
_KNOWN = _ANNOTATIONS | {
    "$ref",
    "additionalProperties",
    "propertyNames",
    "anyOf",
    "const",
    "enum",
    "exclusiveMinimum",
    "format",
    "items",
    "maxItems",
    "maxLength",
    "maximum",
    "minItems",
    "minLength",
    "minimum",
    "oneOf",
    "pattern",
    "properties",
    "required",
    "type",
}
#: Lists are kept short: the property is about values, and a long list only slows it.
_EXTRA_ITEMS = 3


def from_schema(
    schema: dict[str, Any], *, written: Mapping[str, st.SearchStrategy[str]] | None = None
) -> st.SearchStrategy[Any]:
    """Values valid against ``schema``, whose refs point into its own ``$defs``.

    ``written`` maps a ``pattern`` to the strings to draw for it instead of the pattern's own:
    values as people write them, which a regex reaches too rarely (``10s`` rather than
    ``07.3m0ms51d``). They are filtered through the pattern, so every value stays valid."""
    return _Generator(schema, dict(written or {})).strategy(schema)


@dataclass(frozen=True)
class _Generator:
    root: dict[str, Any]
    written: dict[str, st.SearchStrategy[str]] = field(default_factory=dict)

    def strategy(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        unknown = set(schema) - _KNOWN
        if unknown:
            raise ValueError(f"keywords not supported here: {sorted(unknown)}")
        if "$ref" in schema:
            name = schema["$ref"].removeprefix("#/$defs/")
            return st.deferred(lambda: self.strategy(self.root["$defs"][name]))
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        # In this schema the branches of a oneOf exclude each other (each has its own `type`
        # constant, or keys the others do not allow), so any branch's value is valid.
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            rest = {k: v for k, v in schema.items() if k not in {"anyOf", "oneOf"}}
            return st.one_of([self.strategy(_merged(rest, branch)) for branch in branches])
        by_type: dict[str, Callable[[dict[str, Any]], st.SearchStrategy[Any]]] = {
            "object": self._object,
            "array": self._array,
            "string": self._string,
            "integer": lambda s: st.integers(s.get("minimum"), s.get("maximum")),
            "number": _number,
            "boolean": lambda _: st.booleans(),
            "null": lambda _: st.none(),
        }
        kind = schema.get("type")
        if kind not in by_type:
            raise ValueError(f"schema not supported here: {schema}")
        return by_type[kind](schema)

    def _object(self, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        mapping = schema.get("additionalProperties")
        if isinstance(mapping, dict) and not schema.get("properties"):
            # A table (an enum's raw value -> label): keys as propertyNames says.
            keys = self.strategy({"type": "string", **schema.get("propertyNames", {})})
            return st.dictionaries(keys, self.strategy(mapping), max_size=_EXTRA_ITEMS)
        if schema.get("additionalProperties", True) is not False:
            raise ValueError("only closed objects (additionalProperties: false) are generated")
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        values = {key: self.strategy(value) for key, value in properties.items()}
        return st.fixed_dictionaries(
            {key: values[key] for key in properties if key in required},
            optional={key: values[key] for key in properties if key not in required},
        )

    def _array(self, schema: dict[str, Any]) -> st.SearchStrategy[list[Any]]:
        low = schema.get("minItems", 0)
        return st.lists(
            self.strategy(schema["items"]),
            min_size=low,
            max_size=schema.get("maxItems", low + _EXTRA_ITEMS),
        )

    def _string(self, schema: dict[str, Any]) -> st.SearchStrategy[str]:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        text: st.SearchStrategy[str]
        if schema.get("format") == "ipv4":
            text = st.ip_addresses(v=4).map(str)
        elif schema.get("format") == "ipv6":
            text = st.ip_addresses(v=6).map(str)
        elif schema.get("format") == "path":
            # pydantic's plain Path: any text; the model's own checks decide.
            return st.text(min_size=low, max_size=high)
        elif "format" in schema:
            raise ValueError(f"format not supported here: {schema['format']}")
        elif "pattern" in schema:
            # JSON Schema patterns are ECMA-262 regexes, whose \d and \w are ASCII only.
            pattern = re.compile(schema["pattern"], re.ASCII)
            if schema["pattern"] in self.written:
                text = self.written[schema["pattern"]].filter(pattern.fullmatch)
            else:
                text = st.from_regex(pattern, fullmatch=True)
        else:
            return st.text(min_size=low, max_size=high)
        return text.filter(lambda s: low <= len(s) and (high is None or len(s) <= high))


def _merged(rest: dict[str, Any], branch: dict[str, Any]) -> dict[str, Any]:
    """A branch of an anyOf/oneOf with the keywords beside it: an object's properties and
    required keys with a branch that adds constraints (``required: [points]``)."""
    if not set(rest) - _ANNOTATIONS:
        return branch
    merged = {**rest, **{k: v for k, v in branch.items() if k not in {"properties", "required"}}}
    properties = dict(rest.get("properties", {}))
    for key, constraint in branch.get("properties", {}).items():
        properties[key] = {**properties.get(key, {}), **constraint}
    merged["properties"] = properties
    merged["required"] = [*rest.get("required", []), *branch.get("required", [])]
    return merged


def _number(schema: dict[str, Any]) -> st.SearchStrategy[float]:
    exclusive = "exclusiveMinimum" in schema
    return st.floats(
        schema["exclusiveMinimum"] if exclusive else schema.get("minimum"),
        schema.get("maximum"),
        exclude_min=exclusive,
        allow_nan=False,
        allow_infinity=False,
    )
