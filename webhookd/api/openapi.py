"""The OpenAPI 3.1 document of the management API, served at GET /openapi.json.

Written by hand next to the handlers it describes and checked against the running server
by a property-based test, so it says what the server really does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web

from webhookd import __version__
from webhookd.api import auth_fields
from webhookd.api.errors import json_response
from webhookd.api.openapi_text import (
    FIELDS,
    FIELDS_IN,
    OPERATIONS,
    PARAMETERS,
    TAGS,
)
from webhookd.api.openapi_text import (
    SCHEMAS as SCHEMA_TEXT,
)
from webhookd.console.security import CAPABILITIES as PORTAL_CAPABILITIES
from webhookd.formats import FORMATS
from webhookd.signing import ALGORITHMS, SCHEMES
from webhookd.store.interface import DELIVERY_STATES

J = dict[str, Any]
NULLABLE_STRING: J = {"type": ["string", "null"]}
NULLABLE_OBJECT: J = {"type": ["object", "null"]}
TIME: J = {"type": "string", "format": "date-time"}
NULLABLE_TIME: J = {"type": ["string", "null"], "format": "date-time"}
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
TENANT: J = {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9_.:@-]{1,128}$"}


def ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str], props: J, *, closed: bool = True) -> J:
    out: J = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


def page(item: str) -> J:
    return obj(
        ["data", "next_cursor"],
        {"data": {"type": "array", "items": ref(item)}, "next_cursor": NULLABLE_STRING},
    )


STRING_MAP: J = {"type": "object", "additionalProperties": {"type": "string"}}
SIGNATURE: J = obj(
    ["scheme"],
    {
        "scheme": {"type": "string", "enum": list(SCHEMES)},
        "header": {"type": "string"},
        "timestamp_header": {"type": "string"},
        "algorithm": {"type": "string", "enum": list(ALGORITHMS)},
    },
)
PUBLIC_KEY: J = {"type": "string", "pattern": "^whpk_"}
FORMAT: J = {
    "oneOf": [
        {"type": "string", "enum": list(FORMATS)},
        {
            "type": "array",
            "items": {"type": "string", "enum": list(FORMATS)},
            "minItems": 1,
            "maxItems": len(FORMATS),
            "uniqueItems": True,
        },
    ]
}
CHANNEL: J = {"type": "string", "maxLength": 128, "pattern": EVENT_TYPE_PATTERN}
ROUTING_FIELDS: J = {
    "filter": {
        "type": ["object", "null"],
        "propertyNames": {"maxLength": 256},
        "description": (
            "Only events whose envelope ({id, type, timestamp, tenant, data}) matches create "
            "deliveries: dotted paths (data.amount, type, tenant) to a value or an operator "
            "object ($eq $ne $gt $gte $lt $lte $in $nin $exists $prefix $not), combined with "
            "$and, $or, $not; at most 50 conditions and 16384 bytes. null: every event."
        ),
    },
    "channels": {
        "type": ["array", "null"],
        "items": CHANNEL,
        "minItems": 1,
        "maxItems": 50,
        "description": (
            "Only events published with at least one of these channels; null: every event, "
            "with or without channels."
        ),
    },
}
EVENT_CHANNELS: J = {
    "type": ["array", "null"],
    "items": CHANNEL,
    "maxItems": 10,
    "description": (
        "Channels of the event: endpoints with channels receive it only if they share one."
    ),
}
ENDPOINT_FIELDS: J = {
    "url": {"type": "string", "minLength": 1, "maxLength": 2048, "pattern": "^https?://"},
    "events": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 250},
    "tenant": TENANT,
    "description": {"type": "string", "maxLength": 1000},
    "metadata": {**STRING_MAP, "maxProperties": 50},
    "active": {"type": "boolean"},
    "signature": SIGNATURE,
    "format": FORMAT,
    "headers": {**STRING_MAP, "maxProperties": 20},
    "delay_s": {"type": "number", "minimum": 0, "maximum": 604800},
    "rate_limit_per_s": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 10000},
    "max_in_flight": {"type": ["integer", "null"], "minimum": 1},
    "ordered": {"type": "boolean"},
    "paused": {"type": "boolean"},
    **ROUTING_FIELDS,
    "proxy": {
        "type": ["string", "null"],
        "maxLength": 2048,
        "pattern": "^[Hh][Tt][Tt][Pp]://",
        "description": (
            "A forward proxy for this endpoint's requests, http://host:port or "
            "http://user:pass@host:port (port 80 when absent; CONNECT for https targets), "
            "overriding delivery.proxy; null: delivery.proxy. Answers show the password as "
            "[redacted], and sending [redacted] back keeps the stored password."
        ),
    },
    "tls": {
        "type": ["object", "null"],
        "properties": {
            "client_cert": {
                "type": "string",
                "minLength": 1,
                "maxLength": 65536,
                "description": "PEM client certificate (chain) for mutual TLS.",
            },
            "client_key": {
                "type": "string",
                "minLength": 1,
                "maxLength": 65536,
                "writeOnly": True,
                "description": (
                    "The unencrypted PEM private key of client_cert. Write-only: answers "
                    "show [redacted], and sending [redacted] back keeps the stored key."
                ),
            },
            "ca": {
                "type": "string",
                "minLength": 1,
                "maxLength": 524288,
                "description": "PEM bundle trusted for this endpoint instead of the system store.",
            },
        },
        "additionalProperties": False,
        "minProperties": 1,
        "dependentRequired": {"client_cert": ["client_key"], "client_key": ["client_cert"]},
        "description": "TLS material for this endpoint; null: none (the system trust store).",
    },
    "auth": auth_fields.openapi_schema(answer=False),
}
TLS_OUT: J = {
    "type": ["object", "null"],
    "properties": {
        "client_cert": {"type": "string"},
        "client_key": {"type": "string", "const": "[redacted]"},
        "ca": {"type": "string"},
    },
    "additionalProperties": False,
    "description": "The TLS material set; the private key is shown as [redacted].",
}
ENDPOINT_OUT: J = obj(
    [
        "id",
        "url",
        "tenant",
        "description",
        "metadata",
        "events",
        "active",
        "disabled_reason",
        "signature",
        "format",
        "headers",
        "delay_s",
        "rate_limit_per_s",
        "max_in_flight",
        "ordered",
        "paused",
        "proxy",
        "filter",
        "channels",
        "tls",
        "auth",
        "created_at",
        "updated_at",
    ],
    {
        **ENDPOINT_FIELDS,
        "tls": TLS_OUT,
        "auth": auth_fields.openapi_schema(answer=True),
        "id": {"type": "string"},
        "tenant": NULLABLE_STRING,
        "disabled_reason": {"type": ["string", "null"], "enum": ["gone", "failing", None]},
        "max_in_flight": {"type": "integer"},
        "created_at": TIME,
        "updated_at": TIME,
        "secret": {"type": "string"},
        "public_key": PUBLIC_KEY,
    },
)
PUBLISH: J = obj(
    ["type", "payload"],
    {
        "type": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": EVENT_TYPE_PATTERN},
        "payload": {"type": "object"},
        "tenant": TENANT,
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"},
        "deliver_at": NULLABLE_TIME,
        "channels": EVENT_CHANNELS,
    },
)
DELIVERY_FIELDS: J = {
    "id": {"type": "string"},
    "event_id": {"type": "string"},
    "event_type": {"type": "string"},
    "endpoint_id": {"type": "string"},
    "tenant": NULLABLE_STRING,
    "status": {"type": "string", "enum": list(DELIVERY_STATES)},
    "attempt_count": {"type": "integer", "minimum": 0},
    "next_attempt_at": NULLABLE_TIME,
    "created_at": TIME,
    "updated_at": TIME,
}
ATTEMPT: J = obj(
    list(
        (
            "number",
            "started_at",
            "duration_ms",
            "trigger",
            "format",
            "request_headers",
            "status_code",
            "response_headers",
            "response_body",
            "error_kind",
            "error_message",
        )
    ),
    {
        "number": {"type": "integer", "minimum": 1},
        "started_at": TIME,
        "duration_ms": {"type": "integer", "minimum": 0},
        "trigger": {"type": "string", "enum": ["scheduled", "manual"]},
        "format": {"type": "string", "enum": list(FORMATS)},
        "request_headers": STRING_MAP,
        "status_code": {"type": ["integer", "null"]},
        "response_headers": STRING_MAP,
        "response_body": {"type": "string"},
        "error_kind": NULLABLE_STRING,
        "error_message": NULLABLE_STRING,
    },
)
EVENT_FIELDS: J = {
    "id": {"type": "string"},
    "type": {"type": "string"},
    "tenant": NULLABLE_STRING,
    "payload": {"type": ["object", "null"]},
    "payload_erased_at": NULLABLE_TIME,
    "deliver_at": NULLABLE_TIME,
    "created_at": TIME,
}
# Shown only when the event has channels.
EVENT_CHANNELS_OUT: J = {
    "type": "array",
    "items": {"type": "string"},
    "minItems": 1,
    "description": "The event's channels, as published; absent when it has none.",
}
PUBLISH_RESULT: J = obj(
    ["id", "type", "tenant", "created_at", "deliveries"],
    {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "tenant": NULLABLE_STRING,
        "created_at": TIME,
        "deliveries": {"type": "integer", "minimum": 0},
    },
)
SCHEMAS: J = {
    "Error": obj(
        ["error", "message"],
        {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "detail": {
                "type": "array",
                "items": obj(
                    ["loc", "msg"],
                    {
                        "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                        "msg": {"type": "string"},
                    },
                ),
            },
        },
    ),
    "Health": obj(
        ["status"],
        {
            "status": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "string"}},
            "reason": {"type": "string", "description": "Why storage cannot write"},
        },
    ),
    "Cluster": obj(
        ["daemons"],
        {"daemons": {"type": "array", "items": ref("Daemon"), "description": "Alive now."}},
    ),
    "Daemon": obj(
        ["id", "host", "pid", "version", "started_at", "heartbeat_at", "in_flight"],
        {
            "id": {"type": "string", "description": "This run of the daemon (a uuid4)."},
            "host": {"type": "string", "description": "The host name it runs on."},
            "pid": {"type": "integer", "description": "Its process id."},
            "version": {"type": "string", "description": "The webhookd version it runs."},
            "started_at": {**TIME, "description": "When it started."},
            "heartbeat_at": {**TIME, "description": "When it was last known alive."},
            "in_flight": {"type": "integer", "description": "Requests it has open now."},
        },
    ),
    "EndpointCreate": obj(
        ["url"], {**ENDPOINT_FIELDS, "secret": {"type": "string", "maxLength": 256}}
    ),
    "EndpointPatch": obj([], ENDPOINT_FIELDS),
    "Endpoint": ENDPOINT_OUT,
    "EndpointPage": page("Endpoint"),
    "Secret": obj(
        ["secret", "previous_secrets"],
        {
            "secret": {"type": "string"},
            "public_key": PUBLIC_KEY,
            "previous_secrets": {
                "type": "array",
                "items": obj(["expires_at"], {"expires_at": TIME, "public_key": PUBLIC_KEY}),
            },
        },
    ),
    "RotateRequest": obj(
        [],
        {
            "secret": {"type": ["string", "null"], "maxLength": 256},
            "grace_s": {"type": "number", "minimum": 0, "maximum": 604800},
            "algorithm": {"type": ["string", "null"], "enum": [*ALGORITHMS, None]},
        },
    ),
    "RotateResult": obj(["secret"], {"secret": {"type": "string"}, "public_key": PUBLIC_KEY}),
    "TestRequest": obj(
        [],
        {
            "event_type": {"type": "string", "pattern": EVENT_TYPE_PATTERN},
            "payload": {"type": "object"},
        },
    ),
    "TestResult": obj(
        ["event_id", "delivery_id"],
        {"event_id": {"type": "string"}, "delivery_id": {"type": "string"}},
    ),
    "RecoverRequest": obj(["since"], {"since": TIME, "until": NULLABLE_TIME}),
    "RecoverResult": obj(["requeued"], {"requeued": {"type": "integer", "minimum": 0}}),
    "PortalLinkRequest": obj(
        ["tenant"],
        {
            "tenant": {"type": "string", "pattern": r"^[A-Za-z0-9_.:@-]{1,128}$"},
            "ttl_s": {"type": "integer", "minimum": 60, "maximum": 604800},
            "capabilities": {"type": "array", "items": {"enum": list(PORTAL_CAPABILITIES)}},
        },
    ),
    "PortalLink": obj(
        ["url", "expires_at", "tenant", "capabilities"],
        {
            "url": {"type": "string"},
            "expires_at": TIME,
            "tenant": {"type": "string"},
            "capabilities": {"type": "array", "items": {"enum": list(PORTAL_CAPABILITIES)}},
        },
    ),
    "PortalRevokeRequest": obj(
        ["tenant"], {"tenant": {"type": "string", "pattern": r"^[A-Za-z0-9_.:@-]{1,128}$"}}
    ),
    "PortalRevoked": obj(
        ["tenant", "revoked"], {"tenant": {"type": "string"}, "revoked": {"const": True}}
    ),
    "Stats": obj(
        ["counts", "success_rate_24h", "in_flight", "last_success_at", "failing_since"],
        {
            "counts": obj(
                list(DELIVERY_STATES),
                {s: {"type": "integer", "minimum": 0} for s in DELIVERY_STATES},
            ),
            "success_rate_24h": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "in_flight": {"type": "integer", "minimum": 0},
            "last_success_at": NULLABLE_TIME,
            "failing_since": NULLABLE_TIME,
        },
    ),
    "PublishRequest": PUBLISH,
    "BatchRequest": obj(
        ["events"],
        {"events": {"type": "array", "items": PUBLISH, "minItems": 1, "maxItems": 1000}},
    ),
    "PublishResult": PUBLISH_RESULT,
    "BatchResult": obj(["data"], {"data": {"type": "array", "items": PUBLISH_RESULT}}),
    "Event": obj(list(EVENT_FIELDS), {**EVENT_FIELDS, "channels": EVENT_CHANNELS_OUT}),
    "EventDetail": obj(
        [*EVENT_FIELDS, "deliveries"],
        {
            **EVENT_FIELDS,
            "channels": EVENT_CHANNELS_OUT,
            "deliveries": {"type": "array", "items": ref("Delivery")},
        },
    ),
    "EventPage": page("Event"),
    "Delivery": obj(list(DELIVERY_FIELDS), DELIVERY_FIELDS),
    "DeliveryDetail": obj(
        [*DELIVERY_FIELDS, "attempts"],
        {**DELIVERY_FIELDS, "attempts": {"type": "array", "items": ATTEMPT}},
    ),
    "DeliveryPage": page("Delivery"),
    "EventType": obj(
        ["name", "description", "source", "created_at", "schema", "example"],
        {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "source": {"type": "string", "enum": ["builtin", "config", "api"]},
            "created_at": TIME,
            "schema": NULLABLE_OBJECT,
            "example": NULLABLE_OBJECT,
        },
    ),
    "EventTypeCreate": obj(
        ["name"],
        {
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "pattern": EVENT_TYPE_PATTERN,
            },
            "description": {"type": "string", "maxLength": 1000},
            "schema": NULLABLE_OBJECT,
            "example": NULLABLE_OBJECT,
        },
    ),
    "EventTypeUpdate": obj(
        [],
        {
            "description": {"type": "string", "maxLength": 1000},
            "schema": NULLABLE_OBJECT,
            "example": NULLABLE_OBJECT,
        },
    ),
    "EventTypePage": page("EventType"),
}

ERROR_TEXT = {
    400: "Malformed JSON",
    401: "Missing or invalid API key",
    403: "The API key's tenant does not allow this",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    422: "Validation error",
    503: "Storage cannot write; retry later",
}


def _json(schema: J) -> J:
    return {"application/json": {"schema": schema}}


def op(
    summary: str,
    ok: int,
    ok_schema: str | None,
    errors: tuple[int, ...],
    *,
    body: str | None = None,
    body_required: bool = True,
    params: list[J] | None = None,
    public: bool = False,
    op_id: str | None = None,
    links: J | None = None,
) -> J:
    responses: J = {}
    if ok_schema is None:
        responses[str(ok)] = {"description": "Done"}
    else:
        responses[str(ok)] = {"description": summary, "content": _json(ref(ok_schema))}
    if ok == 202 and ok_schema == "PublishResult":
        responses["200"] = {
            "description": "Already published with this id and body",
            "content": _json(ref(ok_schema)),
        }
    codes = set(errors) if public else {*errors, 401}
    for code in sorted(codes | {503} if not public else codes):
        responses[str(code)] = {"description": ERROR_TEXT[code], "content": _json(ref("Error"))}
    if links:
        responses[str(ok)]["links"] = links
    out: J = {"summary": summary, "responses": responses}
    if op_id:
        out["operationId"] = op_id
    if body is not None:
        out["requestBody"] = {"required": body_required, "content": _json(ref(body))}
    if params:
        out["parameters"] = params
    if public:
        out["security"] = []
    return out


def path_param(name: str) -> J:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def query(name: str, schema: J) -> J:
    return {"name": name, "in": "query", "required": False, "schema": schema}


PAGING = [
    query("limit", {"type": "integer", "minimum": 1, "maximum": 250, "default": 50}),
    query("cursor", {"type": "string"}),
]
WINDOW = [query("since", TIME), query("until", TIME)]
LIST_ERRORS = (403, 422)
EP = [path_param("endpoint_id")]
BODY_ERRORS = (400, 404, 413, 422)


def _operations_paths() -> J:
    """The unauthenticated operational routes and /metrics."""
    return {
        "/healthz": {"get": op("Liveness", 200, "Health", (), public=True)},
        "/readyz": {
            "get": {
                **op("Readiness", 200, "Health", (), public=True),
                "responses": {
                    "200": {"description": "Ready", "content": _json(ref("Health"))},
                    "503": {"description": "Not ready", "content": _json(ref("Health"))},
                },
            }
        },
        "/v1/cluster": {"get": op("The daemons sharing the database", 200, "Cluster", (403,))},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (auth only with metrics.require_auth)",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": {"description": ERROR_TEXT[401], "content": _json(ref("Error"))},
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def _event_type_paths() -> J:
    """The event-type catalog."""
    return {
        "/v1/event-types": {
            "get": op("List event types", 200, "EventTypePage", (422,), params=PAGING),
            "post": op(
                "Create an event type",
                201,
                "EventType",
                (400, 403, 409, 413, 422),
                body="EventTypeCreate",
            ),
        },
        "/v1/event-types/{name}": {
            "get": op("Get an event type", 200, "EventType", (404,), params=[path_param("name")]),
            "patch": op(
                "Change an event type",
                200,
                "EventType",
                (400, 403, 404, 409, 413, 422),
                body="EventTypeUpdate",
                params=[path_param("name")],
            ),
            "delete": op(
                "Delete an event type", 204, None, (403, 404, 409), params=[path_param("name")]
            ),
        },
        "/v1/event-types/{name}/schema": {"get": _schema_op()},
    }


def _schema_op() -> J:
    """GET /v1/event-types/{name}/schema: the schema alone, as application/schema+json."""
    out = op("Get an event type's JSON Schema", 200, None, (404,), params=[path_param("name")])
    out["responses"]["200"] = {
        "description": "The type's JSON Schema (draft 2020-12)",
        "content": {"application/schema+json": {"schema": {"type": "object"}}},
    }
    return out


def _endpoint_paths() -> J:
    """Endpoints: create, list, get, change, delete."""
    return {
        "/v1/endpoints": {
            "get": op(
                "List endpoints",
                200,
                "EndpointPage",
                LIST_ERRORS,
                params=[
                    *PAGING,
                    query("tenant", {"type": "string"}),
                    query("active", {"type": "boolean"}),
                ],
            ),
            "post": op(
                "Create an endpoint (the answer includes its secret)",
                201,
                "Endpoint",
                (400, 403, 413, 422),
                body="EndpointCreate",
            ),
        },
        "/v1/endpoints/{endpoint_id}": {
            "get": op("Get an endpoint", 200, "Endpoint", (404,), params=EP),
            "patch": op(
                "Change an endpoint",
                200,
                "Endpoint",
                (*BODY_ERRORS, 403),
                body="EndpointPatch",
                params=EP,
            ),
            "delete": op(
                "Delete an endpoint; its undelivered deliveries become cancelled",
                204,
                None,
                (404,),
                params=EP,
            ),
        },
    }


def _endpoint_operation_paths() -> J:
    """What is done to one endpoint: its secret, tests, recovery, stats."""
    return {
        "/v1/endpoints/{endpoint_id}/secret": {
            "get": op("The endpoint's signing secret", 200, "Secret", (404,), params=EP)
        },
        "/v1/endpoints/{endpoint_id}/secret/rotate": {
            "post": op(
                "Rotate the secret; the old one keeps signing for grace_s",
                200,
                "RotateResult",
                BODY_ERRORS,
                body="RotateRequest",
                body_required=False,
                params=EP,
            )
        },
        "/v1/endpoints/{endpoint_id}/test": {
            "post": op(
                "Send a test event to this endpoint only",
                202,
                "TestResult",
                (*BODY_ERRORS, 409),
                body="TestRequest",
                body_required=False,
                params=EP,
            )
        },
        "/v1/endpoints/{endpoint_id}/recover": {
            "post": op(
                "Requeue failed and skipped deliveries created in a window",
                202,
                "RecoverResult",
                BODY_ERRORS,
                body="RecoverRequest",
                params=EP,
            )
        },
        "/v1/endpoints/{endpoint_id}/stats": {
            "get": op("Delivery statistics", 200, "Stats", (404,), params=EP)
        },
    }


# W3C trace context (webhookd/tracing.py): no pattern, since an invalid one is ignored,
# never refused.
TRACEPARENT: J = {
    "name": "traceparent",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
}


def _publish_op() -> J:
    """POST /v1/events, with its idempotency and trace context headers."""
    return {
        **op(
            "Publish an event (answered after it is on disk)",
            202,
            "PublishResult",
            (400, 403, 409, 413, 422),
            body="PublishRequest",
        ),
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"},
            },
            TRACEPARENT,
        ],
    }


def _event_paths() -> J:
    """Publishing and reading events."""
    return {
        "/v1/events": {
            "get": op(
                "List events",
                200,
                "EventPage",
                LIST_ERRORS,
                params=[
                    *PAGING,
                    query("type", {"type": "string"}),
                    query("tenant", {"type": "string"}),
                    *WINDOW,
                ],
            ),
            "post": _publish_op(),
        },
        "/v1/events/batch": {
            "post": {
                **op(
                    "Publish up to 1000 events in one transaction",
                    202,
                    "BatchResult",
                    (400, 403, 409, 413, 422),
                    body="BatchRequest",
                ),
                "parameters": [TRACEPARENT],
            }
        },
        "/v1/events/{event_id}": {
            "get": op(
                "An event with its deliveries",
                200,
                "EventDetail",
                (403, 404, 409, 422),
                params=[
                    path_param("event_id"),
                    # Ids are unique per tenant: which tenant's (empty: no tenant's).
                    query("tenant", {"type": "string"}),
                ],
            )
        },
        "/v1/events/{event_id}/payload": {
            "delete": op(
                "Erase the event's payload",
                204,
                None,
                (403, 404, 409, 422),
                params=[path_param("event_id"), query("tenant", {"type": "string"})],
            )
        },
    }


def _delivery_paths() -> J:
    """The delivery log and manual retries."""
    return {
        "/v1/deliveries": {
            "get": op(
                "List deliveries",
                200,
                "DeliveryPage",
                LIST_ERRORS,
                params=[
                    *PAGING,
                    query("endpoint_id", {"type": "string"}),
                    query("event_id", {"type": "string"}),
                    query("event_type", {"type": "string"}),
                    query("status", {"type": "string", "enum": list(DELIVERY_STATES)}),
                    query("tenant", {"type": "string"}),
                    *WINDOW,
                ],
            )
        },
        "/v1/deliveries/{delivery_id}": {
            "get": op(
                "A delivery with every attempt",
                200,
                "DeliveryDetail",
                (404,),
                params=[path_param("delivery_id")],
            )
        },
        "/v1/deliveries/{delivery_id}/retry": {
            "post": op(
                "Attempt again now",
                202,
                "Delivery",
                (404, 409),
                params=[path_param("delivery_id")],
            )
        },
    }


def _portal_paths() -> J:
    """Tenant portal links (webhookd/api/portal_links.py)."""
    return {
        "/v1/portal-links": {
            "post": op(
                "Make a tenant portal link",
                201,
                "PortalLink",
                (400, 403, 409, 413, 422),
                body="PortalLinkRequest",
            )
        },
        "/v1/portal-links/revoke": {
            "post": op(
                "End every portal link and session of a tenant",
                200,
                "PortalRevoked",
                (400, 403, 409, 413, 422),
                body="PortalRevokeRequest",
            )
        },
    }


def _paths() -> J:
    return {
        **_portal_paths(),
        **_operations_paths(),
        **_event_type_paths(),
        **_endpoint_paths(),
        **_endpoint_operation_paths(),
        **_event_paths(),
        **_delivery_paths(),
    }


def operation_id(method: str, path: str) -> str:
    """`endpoints.create`: the resource, a dot, the action (what generators name methods by)."""
    known = OPERATIONS.get((method, path))
    if known is not None:
        return known[0]
    return f"{_tag(path).replace('-', '_')}.{method}"


def _tag(path: str) -> str:
    known = next((tag for (_, p), (_, tag, _) in OPERATIONS.items() if p == path), None)
    if known is not None:
        return known
    parts = [w for w in path.split("/") if w and w != "v1"]
    return parts[0] if path.startswith("/v1/") and parts else "operations"


def _describe_operation(method: str, path: str, operation: J) -> None:
    """Its id, its tag and a description; a route not in OPERATIONS gets its summary."""
    known = OPERATIONS.get((method, path))
    operation["operationId"] = operation_id(method, path)
    operation["tags"] = [_tag(path)]
    operation["description"] = known[2] if known else operation.get("summary", "")
    for param in operation.get("parameters", []):
        param.setdefault("description", PARAMETERS.get(param["name"], param["name"]))


def _described(schema: J, owner: str) -> J:
    """A copy of `schema` with a description on every property, at any depth. Copies,
    because the constants above share property schemas (TIME, NULLABLE_STRING) between
    fields that mean different things."""
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {
            name: _field(name, prop, owner) for name, prop in out["properties"].items()
        }
    if isinstance(out.get("items"), dict):
        out["items"] = _described(out["items"], owner)
    for key in ("oneOf", "anyOf"):
        if isinstance(out.get(key), list):
            out[key] = [_described(s, owner) for s in out[key]]
    return out


def _field(name: str, prop: J, owner: str) -> J:
    out = _described(prop, owner)
    text = FIELDS_IN.get((owner, name)) or FIELDS.get(name)
    if "description" not in out and text:
        out["description"] = text
    return out


def _schemas() -> J:
    return {
        name: {**_described(schema, name), "description": SCHEMA_TEXT.get(name, name)}
        for name, schema in SCHEMAS.items()
    }


def _link(paths: J, source: tuple[str, str, str], prefix: str, param: str, field: str) -> None:
    """OpenAPI links from a creating operation to every operation on what it created."""
    method, path, status = source
    links: J = {}
    for target, methods in paths.items():
        if target.startswith(prefix):
            for target_method in methods:
                name = operation_id(target_method, target)
                links[name] = {
                    "operationId": name,
                    "description": f"{name} on what this created",
                    "parameters": {param: f"$response.body#/{field}"},
                }
    paths[path][method]["responses"][status]["links"] = links


@cache
def document() -> J:
    paths = _paths()
    paths["/v1/events/batch"]["post"]["responses"]["200"] = {
        "description": "Every event was already published with these ids and bodies",
        "content": _json(ref("BatchResult")),
    }
    for path, methods in paths.items():
        for method, operation in methods.items():
            _describe_operation(method, path, operation)
    _link(
        paths, ("post", "/v1/endpoints", "201"), "/v1/endpoints/{endpoint_id}", "endpoint_id", "id"
    )
    _link(paths, ("post", "/v1/events", "202"), "/v1/events/{event_id}", "event_id", "id")
    _link(
        paths,
        ("post", "/v1/endpoints/{endpoint_id}/test", "202"),
        "/v1/deliveries/{delivery_id}",
        "delivery_id",
        "delivery_id",
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "webhookd",
            "version": __version__,
            "description": "The management API of webhookd, a self-hosted webhook sender.",
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"bearer": []}],
        "tags": TAGS,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from the config's api_keys; none needed when "
                    "the config has no keys (loopback or unix socket only).",
                }
            },
        },
        "paths": paths,
    }


async def serve(request: web.Request) -> web.Response:
    return json_response(document())


def routes() -> list[web.RouteDef]:
    return [web.get("/openapi.json", serve, allow_head=False)]
