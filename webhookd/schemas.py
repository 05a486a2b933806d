"""Event-type JSON Schemas (draft 2020-12): checking a schema and its example, compiling
it, and validating payloads against it; and the compiled validators of the catalog.

The validator is jsonschema_rs (Rust, maintained, Draft 2020-12 with instance paths on
its errors). Measured with `bench/schemas.py --validators` on its schema (the bench's order
payload: 8 typed properties, 5 required, two nested objects, an array of objects, enums, a
pattern, an email format), on the shared 2-core machine (load average 3.6 at the start):

| | jsonschema_rs 0.60 | jsonschema 4.26 (pure Python) |
|---|---|---|
| validate one valid payload | 0.9 us | 86 us |
| check and compile the schema | 39 us | 3.3 ms |

The whole check a publish makes (`webhookd.api.event_types.check_payload`: the type's
validator looked up, then the payload validated) took 1.26 us for that type against
0.18 us for a type without a schema. A single publish costs the daemon some 140 us and an
event of a batch of 1000 some 24 us, so the 20 % the contract allows is 28 and 5 us: the
pure-Python validator costs more than that even for single publishes. With jsonschema_rs,
bench/schemas.py (3 rounds, both types interleaved) measured the daemon's CPU per event
with the schema at 0.99 (0.97-1.04) times that without for single publishes and 1.04
(1.00-1.12) for batches of 1000.

Remote references are never fetched: validators are built with `offline=True`, so a
`$ref` to anything outside the schema itself is refused when the schema is given (a 422,
or exit 78 for the config), never retrieved later. `format` is asserted (a `date-time`
that is not one is an error), unknown formats are ignored. `$schema`, when given, must
name draft 2020-12.

Each schema is compiled once: when its type is created or changed through the API, and
for a type loaded from the database or the config, at the first publish to it; then
`Validators` keeps it for every publish. `compile_count()` says how many compilations this
process made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jsonschema_rs

if TYPE_CHECKING:  # (config.py imports this module, and the store's imports config)
    from webhookd.store.interface import EventType

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# Validation errors reported for one payload (a 422 `detail` stays readable).
MAX_ERRORS = 20
# A message quotes the value it is about: a long value is cut in its middle.
MAX_MSG_CHARS = 240

Path = tuple[str | int, ...]
Problem = tuple[Path, str]
Validator = jsonschema_rs.Validator

_compiles = 0


class SchemaError(ValueError):
    """A schema that is not a usable draft 2020-12 schema; `path` points into it."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def compile_count() -> int:
    """How many schemas this process has compiled (each type's once: see Validators)."""
    return _compiles


def compile_schema(schema: Any) -> Validator:
    """The validator of a draft 2020-12 schema; SchemaError naming where it is wrong."""
    global _compiles
    if not isinstance(schema, dict):
        raise SchemaError((), "expected a JSON Schema object")
    declared = schema.get("$schema")
    if declared is not None and (not isinstance(declared, str) or _draft(declared) is None):
        raise SchemaError(("$schema",), f"expected {DRAFT_2020_12} (draft 2020-12), or none")
    plain = plain_json(schema)
    if plain is not None:
        raise SchemaError(*plain)
    _compiles += 1
    try:
        return jsonschema_rs.Draft202012Validator(schema, validate_formats=True, offline=True)
    except jsonschema_rs.ValidationError as exc:
        if isinstance(exc.kind, jsonschema_rs.ValidationErrorKind.Referencing):
            raise SchemaError(*_reference_problem(schema, exc.message)) from None
        path = tuple(exc.instance_path)
        msg = f"not valid in a draft 2020-12 schema: {_short(exc.message)}"
        raise SchemaError(path, msg) from None
    except (ValueError, TypeError) as exc:  # a value jsonschema_rs cannot take
        raise SchemaError((), f"cannot be compiled: {_short(str(exc))}") from None


def _draft(uri: str) -> str | None:
    return DRAFT_2020_12 if uri.rstrip("#") == DRAFT_2020_12 else None


def _reference_problem(schema: dict[str, Any], message: str) -> Problem:
    """Where an unresolvable `$ref` is, and why it is refused."""
    if "Retrieval is disabled" in message:
        uri = message.rsplit("cannot fetch ", 1)[-1].strip()
        path = next((p for p, ref in _refs(schema, ()) if uri.endswith(ref.split("#")[0])), ())
        return (
            path,
            f"refers to {_short(uri)}, outside this schema; webhookd never fetches remote "
            "references: put the definitions under $defs and refer to them as #/$defs/...",
        )
    pointer = message.split("'")[1] if message.count("'") >= 2 else ""
    path = next((p for p, ref in _refs(schema, ()) if pointer and ref.endswith(pointer)), ())
    return path, f"a reference that does not resolve: {_short(message)}"


def _refs(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    """Every `$ref` of a schema, with the path of its key."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("$ref", "$dynamicRef") and isinstance(item, str):
                yield (*path, key), item
            else:
                yield from _refs(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _refs(item, (*path, i))


def payload_problems(validator: Validator, payload: Any) -> list[Problem]:
    """Where and why `payload` does not validate (at most MAX_ERRORS); [] if it does."""
    try:
        if validator.is_valid(payload):
            return []
        out: list[Problem] = []
        for err in validator.iter_errors(payload):
            out.extend(_problems_of(err))
            if len(out) >= MAX_ERRORS:
                break
        return out[:MAX_ERRORS]
    except (ValueError, TypeError):
        # orjson.Fragment: an integer of more digits than Python converts (jsonio).
        return [((), "holds an integer too long to check against the type's schema")]


def _problems_of(err: jsonschema_rs.ValidationError) -> list[Problem]:
    """One error as the API's problems: a missing or an unexpected property is named in
    the path, as the API's own checks do."""
    path = tuple(err.instance_path)
    kind = err.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        return [((*path, kind.property), "field required by the event type's schema")]
    if isinstance(
        kind,
        jsonschema_rs.ValidationErrorKind.AdditionalProperties
        | jsonschema_rs.ValidationErrorKind.UnevaluatedProperties,
    ):
        msg = "unknown field; the event type's schema allows no other properties"
        return [((*path, name), msg) for name in kind.unexpected]
    return [(path, _short(err.message))]


def _short(text: str) -> str:
    if len(text) <= MAX_MSG_CHARS:
        return text
    keep = (MAX_MSG_CHARS - 3) // 2
    return text[:keep] + "..." + text[-keep:]


def check_pair(schema: Any, example: Any) -> tuple[Validator | None, list[tuple[str, Path, str]]]:
    """Check a type's schema and example together: the compiled schema (None when there
    is none or it is wrong) and the problems, each (`schema` or `example`, a path into
    it, a message). The example must be a JSON object and validate against the schema."""
    problems: list[tuple[str, Path, str]] = []
    validator = None
    if schema is not None:
        try:
            validator = compile_schema(schema)
        except SchemaError as exc:
            problems.append(("schema", exc.path, exc.message))
    if example is not None:
        plain = plain_json(example)
        if not isinstance(example, dict):
            problems.append(("example", (), "expected a JSON object (an event payload)"))
        elif plain is not None:
            problems.append(("example", *plain))
        elif validator is not None:
            problems.extend(("example", p, m) for p, m in payload_problems(validator, example))
    return validator, problems


def plain_json(value: Any, path: Path = ()) -> Problem | None:
    """The first place where `value` is not plain JSON (objects with string keys, arrays,
    strings, finite numbers, booleans, null), or None. YAML can give dates, sets and
    numeric keys, and the API's parser integers too long to convert."""
    if value is None or isinstance(value, bool | str | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "expected a finite number")
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = plain_json(item, (*path, i))
            if found is not None:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (path, f"expected string keys, got {key!r}")
            found = plain_json(item, (*path, key))
            if found is not None:
                return found
        return None
    return (path, f"expected a JSON value, got {type(value).__name__}")


class Validators:
    """The compiled schema of each event type that has one, for publishing.

    Kept by name with the schema it was compiled from: a type whose schema object is the
    one held (or an equal one: the catalog read again) reuses its validator, so each
    schema is compiled once, however often it is published to."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[dict[str, Any], Validator]] = {}

    def remember(self, name: str, schema: dict[str, Any] | None, validator: Any) -> None:
        """Keep the validator just compiled for a type's new schema (None: forget it)."""
        if schema is None or validator is None:
            self._held.pop(name, None)
        else:
            self._held[name] = (schema, validator)

    def forget(self, name: str) -> None:
        self._held.pop(name, None)

    def for_type(self, et: EventType | None) -> Validator | None:
        """The type's validator (compiled now if this process has not yet), or None for
        a type without a schema."""
        if et is None or et.schema is None:
            return None
        held = self._held.get(et.name)
        if held is not None:
            schema, validator = held
            if schema is et.schema:
                return validator
            if schema == et.schema:
                self._held[et.name] = (et.schema, validator)
                return validator
        validator = compile_schema(et.schema)
        self._held[et.name] = (et.schema, validator)
        return validator
