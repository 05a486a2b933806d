"""The words of the OpenAPI document: operation ids, tags and descriptions of operations,
schemas, fields and parameters, kept apart from the shapes in webhookd.api.openapi so that
either reads on its own. Generators name their functions and modules from the ids and
tags; people read the rest.
"""

from __future__ import annotations

TAGS = [
    {"name": "events", "description": "Publish events and read what was published."},
    {"name": "endpoints", "description": "Where events are delivered, and how."},
    {"name": "deliveries", "description": "The delivery log: one event to one endpoint."},
    {"name": "event-types", "description": "The catalog of event types that may be published."},
    {"name": "operations", "description": "Health, readiness, metrics and this document."},
    {"name": "portal-links", "description": "Links that open the tenant portal for one tenant."},
]

# (method, path) -> (operation id, tag, description)
OPERATIONS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("post", "/v1/portal-links"): (
        "portal_links.create",
        "portal-links",
        "A link that opens the tenant portal for one tenant, with these capabilities, until "
        "ttl_s has passed. A tenant-scoped key makes links for its own tenant only.",
    ),
    ("post", "/v1/portal-links/revoke"): (
        "portal_links.revoke",
        "portal-links",
        "End every portal link and session of the tenant at once.",
    ),
    ("get", "/healthz"): (
        "operations.liveness",
        "operations",
        "Answers 200 while the process is up. No authentication.",
    ),
    ("get", "/readyz"): (
        "operations.readiness",
        "operations",
        "200 when a real write to storage succeeds and the dispatcher runs; 503 with the "
        "problems (and Retry-After) otherwise. No authentication.",
    ),
    ("get", "/metrics"): (
        "operations.metrics",
        "operations",
        "Prometheus metrics in text format; needs an API key only with metrics.require_auth.",
    ),
    ("get", "/v1/cluster"): (
        "operations.cluster",
        "operations",
        "The daemons alive now that share this database (on SQLite, this one). A "
        "tenant-scoped key gets 403: this is operator information.",
    ),
    ("get", "/openapi.json"): (
        "operations.openapi",
        "operations",
        "This OpenAPI 3.1 document. No authentication.",
    ),
    ("get", "/v1/event-types"): (
        "event_types.list",
        "event-types",
        "Every event type in the catalog, sorted by name: built in, from the config file, "
        "or created through the API.",
    ),
    ("post", "/v1/event-types"): (
        "event_types.create",
        "event-types",
        "Add an event type to the catalog (409 if it exists), with an optional JSON Schema "
        "(draft 2020-12) that every published payload of the type must validate against, and "
        "an example payload (which must validate). A tenant-scoped key gets 403: the catalog "
        "is shared.",
    ),
    ("get", "/v1/event-types/{name}"): (
        "event_types.get",
        "event-types",
        "One event type, with its schema and example (null when it has none).",
    ),
    ("patch", "/v1/event-types/{name}"): (
        "event_types.update",
        "event-types",
        "Change the description, schema or example of a type created through the API (null "
        "removes the schema or the example); the example must validate against the schema the "
        "type ends with. Built-in and config types cannot be changed (409).",
    ),
    ("get", "/v1/event-types/{name}/schema"): (
        "event_types.schema",
        "event-types",
        "The type's JSON Schema alone (application/schema+json), for receivers' tooling; "
        "404 when the type has none.",
    ),
    ("delete", "/v1/event-types/{name}"): (
        "event_types.delete",
        "event-types",
        "Remove an event type created through the API; built-in types and those of the "
        "config file cannot be removed (409).",
    ),
    ("get", "/v1/endpoints"): (
        "endpoints.list",
        "endpoints",
        "Endpoints, newest first, optionally of one tenant or only (in)active ones.",
    ),
    ("post", "/v1/endpoints"): (
        "endpoints.create",
        "endpoints",
        "Create an endpoint. The answer includes its signing secret: with GET "
        "/v1/endpoints/{endpoint_id}/secret, the only places it is shown.",
    ),
    ("get", "/v1/endpoints/{endpoint_id}"): ("endpoints.get", "endpoints", "One endpoint."),
    ("patch", "/v1/endpoints/{endpoint_id}"): (
        "endpoints.update",
        "endpoints",
        "Change any field but the secret. active: false disables the endpoint (its pending "
        "deliveries become skipped); active: true enables it again. paused: true holds its "
        "deliveries pending, none skipped, until paused: false.",
    ),
    ("delete", "/v1/endpoints/{endpoint_id}"): (
        "endpoints.delete",
        "endpoints",
        "Delete an endpoint; its undelivered deliveries become cancelled.",
    ),
    ("get", "/v1/endpoints/{endpoint_id}/secret"): (
        "endpoints.get_secret",
        "endpoints",
        "The current signing secret, and when the rotated-out ones still valid expire.",
    ),
    ("post", "/v1/endpoints/{endpoint_id}/secret/rotate"): (
        "endpoints.rotate_secret",
        "endpoints",
        "Replace the signing secret (with one given, or a generated one); during grace_s "
        "deliveries carry signatures from the old and the new secrets (standard scheme).",
    ),
    ("post", "/v1/endpoints/{endpoint_id}/test"): (
        "endpoints.test",
        "endpoints",
        "Send one event (webhookd.test unless event_type is given) to this endpoint only.",
    ),
    ("post", "/v1/endpoints/{endpoint_id}/recover"): (
        "endpoints.recover",
        "endpoints",
        "Put the failed and skipped deliveries created between since and until back to "
        "pending, to be attempted again. Those of events whose payload was erased stay as "
        "they are (409 when they are all the window holds).",
    ),
    ("get", "/v1/endpoints/{endpoint_id}/stats"): (
        "endpoints.stats",
        "endpoints",
        "Deliveries per status, the 24-hour success rate, requests in flight, the last "
        "success and since when the endpoint has been failing.",
    ),
    ("get", "/v1/events"): (
        "events.list",
        "events",
        "Published events, newest first, filtered by type, tenant and time.",
    ),
    ("post", "/v1/events"): (
        "events.publish",
        "events",
        "Publish an event to every subscribed endpoint of its tenant. Answered 202 once the "
        "event and its deliveries are on disk. With an id (or Idempotency-Key) the same "
        "body again answers 200 with the original event and creates nothing; another body "
        "is a 409.",
    ),
    ("post", "/v1/events/batch"): (
        "events.publish_batch",
        "events",
        "Publish up to 1000 events in one transaction: an invalid event refuses the whole "
        "batch (422, each problem's loc naming the event's index) and nothing is stored.",
    ),
    ("get", "/v1/events/{event_id}"): (
        "events.get",
        "events",
        "One event with its payload and a summary of each of its deliveries.",
    ),
    ("delete", "/v1/events/{event_id}/payload"): (
        "events.erase_payload",
        "events",
        "Erase the event's stored payload now: the event stays listed with payload null "
        "and payload_erased_at, and its pending and in-flight deliveries become cancelled "
        "(none can be retried or recovered: 409). Erasing again answers 204 and keeps the "
        "first time. The event is looked up as GET /v1/events/{event_id} does.",
    ),
    ("get", "/v1/deliveries"): (
        "deliveries.list",
        "deliveries",
        "Deliveries, newest first, filtered by endpoint, event, type, status and time.",
    ),
    ("get", "/v1/deliveries/{delivery_id}"): (
        "deliveries.get",
        "deliveries",
        "One delivery with every attempt, oldest first: what was sent and what came back.",
    ),
    ("post", "/v1/deliveries/{delivery_id}/retry"): (
        "deliveries.retry",
        "deliveries",
        "Attempt the delivery again now, whatever its state (a delivered one is resent). A "
        "manual attempt that fails is not retried. 409 while its endpoint is disabled, "
        "deleted or paused, or an attempt is in progress, and once its event's payload "
        "was erased.",
    ),
}

SCHEMAS = {
    "Error": "An error answer: a code and one sentence a person can act on.",
    "Health": "The answer of /healthz and /readyz.",
    "Cluster": "The daemons alive now that share the database.",
    "Daemon": "One daemon: its identity, when it was last known alive, its open requests.",
    "EndpointCreate": "A new endpoint: only url is required.",
    "EndpointPatch": "The endpoint fields to change; those absent keep their value.",
    "Endpoint": "An endpoint: where events are delivered, and how.",
    "EndpointPage": "One page of endpoints.",
    "Secret": "An endpoint's signing secret.",
    "RotateRequest": "How to rotate a secret.",
    "RotateResult": "The new secret.",
    "TestRequest": "What to send as a test.",
    "TestResult": "The test event and its one delivery.",
    "RecoverRequest": "The window of deliveries to requeue.",
    "RecoverResult": "How many deliveries went back to pending.",
    "PortalLinkRequest": "Which tenant a portal link opens, for how long, allowing what.",
    "PortalLink": "A portal link: hand its url to one of the tenant's users.",
    "PortalRevokeRequest": "The tenant whose portal links and sessions end.",
    "PortalRevoked": "The tenant's portal links and sessions are void.",
    "Stats": "Delivery statistics of one endpoint.",
    "PublishRequest": "An event to publish.",
    "BatchRequest": "Events to publish in one transaction.",
    "PublishResult": "An accepted event.",
    "BatchResult": "One result per event, in the order of the request.",
    "Event": "A published event.",
    "EventDetail": "A published event with its deliveries.",
    "EventPage": "One page of events.",
    "Delivery": "One event to one endpoint.",
    "DeliveryDetail": "A delivery with every attempt.",
    "DeliveryPage": "One page of deliveries.",
    "EventType": "An event type of the catalog.",
    "EventTypeCreate": "A new event type.",
    "EventTypeUpdate": "Changes to an event type; fields left out keep their value.",
    "EventTypePage": "One page of event types.",
}

# Field descriptions by name; FIELDS_IN names the few whose meaning depends on the schema.
FIELDS = {
    "active": "false: no attempts are made and deliveries are skipped until enabled again.",
    "algorithm": "Of the standard scheme: hmac-sha256 (v1 signatures with a whsec_ secret, "
    "the default) or ed25519 (v1a signatures with a whsk_ private key; receivers verify with "
    "the whpk_ public key). It is the kind of the current secret: a PATCH cannot change it; "
    "rotating the secret with the other algorithm does.",
    "attempt_count": "Attempts made so far.",
    "attempts": "Every attempt, oldest first.",
    "ca": "PEM bundle trusted for this endpoint instead of the system store.",
    "cancelled": "Deliveries cancelled (their endpoint was deleted).",
    "client_cert": "PEM client certificate (chain) for mutual TLS.",
    "client_key": "The PEM private key of client_cert; shown as [redacted].",
    "counts": "Deliveries per status.",
    "created_at": "When it was created (RFC 3339, UTC).",
    "data": "The items of this page, newest first.",
    "delay_s": "Seconds every delivery is held before its first attempt (0-604800).",
    "deliver_at": "Hold delivery until this time (at most a year ahead); null: at once.",
    "delivered": "Deliveries that succeeded.",
    "delivering": "Deliveries being attempted now.",
    "delivery_id": "The delivery's id (dlv_…).",
    "description": "Free text.",
    "detail": "Each problem of a validation error, with where it is.",
    "disabled_reason": "Why webhookd disabled the endpoint: gone (410) or failing; null.",
    "duration_ms": "How long the attempt took, in milliseconds.",
    "endpoint_id": "The endpoint's id (ep_…).",
    "error": "The error code: malformed_json, unauthorized, not_found, validation_error, ….",
    "error_kind": "Why no response came (timeout, connection_refused, dns, tls, …), or "
    "auth_token when no token could be had from the endpoint's OAuth 2.0 token endpoint; "
    "null when a response came.",
    "error_message": "One sentence for the operator about the failure; null on a response.",
    "event_id": "The event's id (evt_… or the id given at publish).",
    "event_type": "The event's type.",
    "events": "Event types this endpoint receives: names, prefix patterns (order.*) or *.",
    "expires_at": "When the rotated-out secret stops signing.",
    "failed": "Deliveries that gave up after their last retry.",
    "failing_since": "Since when every attempt has failed; null while it succeeds.",
    "format": "Body format: json, form or multipart, or a list tried in order.",
    "grace_s": "Seconds the old secret keeps signing (0-604800, default 86400).",
    "header": "The name of the signature header.",
    "headers": "Extra request headers (at most 20).",
    "id": "The id.",
    "in_flight": "Requests open to the endpoint now.",
    "last_success_at": "When the last attempt succeeded; null if none did.",
    "loc": "Where the problem is, e.g. [body, url] or [body, events, 3, type].",
    "max_in_flight": "At most this many requests open to the endpoint at once.",
    "message": "One sentence a person can act on.",
    "metadata": "Your own strings about the endpoint (at most 50 keys).",
    "msg": "What is wrong there.",
    "name": "Dot-separated segments of [a-zA-Z0-9_-], e.g. order.created.",
    "next_attempt_at": "When the next attempt is due; null unless pending.",
    "next_cursor": "Pass as cursor for the next page; null on the last one.",
    "number": "The attempt's number, from 1.",
    "ordered": "Deliver strictly one at a time, in publish order.",
    "paused": "true: deliveries wait as pending and nothing is attempted until it is false "
    "again; then they go at the endpoint's limits, in order where ordered. Unlike "
    "active: false, nothing is skipped.",
    "payload": "The event's data, sent to endpoints as data; null once erased.",
    "payload_erased_at": "When the payload was erased (DELETE /v1/events/{event_id}/payload "
    "or retention.payload_days); null while it is kept.",
    "pending": "Deliveries waiting for their next attempt.",
    "previous_secrets": "Rotated-out secrets that still sign, until they expire.",
    "problems": "What keeps the daemon from being ready.",
    "proxy": "A forward proxy for this endpoint; null: delivery.proxy.",
    "public_key": "The Ed25519 public key (whpk_ + base64 of 32 bytes) that verifies the v1a "
    "signatures of this secret; only for signature.algorithm ed25519.",
    "rate_limit_per_s": "At most this many attempts per second; null: no limit.",
    "reason": "Why storage cannot write.",
    "request_headers": "The headers sent, signature headers included (a token and the "
    "Authorization of the endpoint's auth shown as [redacted]).",
    "requeued": "How many deliveries went back to pending.",
    "response_body": "The start of the response body, as text.",
    "response_headers": "The response's headers.",
    "scheme": "The signature scheme: standard, hmac-sha256, hmac-sha256-timestamped, "
    "token or none.",
    "secret": "The signing secret (whsec_… for the standard scheme, or a whsk_… Ed25519 "
    "private key with signature.algorithm ed25519).",
    "signature": "How requests are signed.",
    "since": "From this time on (RFC 3339).",
    "skipped": "Deliveries skipped while the endpoint was disabled.",
    "source": "Where the type comes from: builtin, config or api.",
    "started_at": "When the attempt started.",
    "status": "The delivery's state.",
    "status_code": "The response's HTTP status; null when no response came.",
    "success_rate_24h": "Delivered / finished deliveries of the last 24 hours; null if none.",
    "tenant": "The customer account it belongs to; events reach only endpoints of their "
    "own tenant (null matches null).",
    "timestamp_header": "The name of the timestamp header (hmac-sha256-timestamped).",
    "tls": "TLS material for this endpoint; null: none.",
    "trigger": "scheduled, or manual (a retry or test asked for).",
    "type": "The event type, from the catalog.",
    "until": "Up to this time (RFC 3339); default now.",
    "updated_at": "When it last changed.",
    "url": "Where deliveries are POSTed (https unless the config allows http).",
}
FIELDS_IN = {
    ("PortalLinkRequest", "tenant"): "The tenant the portal shows, and nothing else.",
    ("PortalLinkRequest", "ttl_s"): "How long the link opens the portal, 60-604800 s.",
    ("PortalLinkRequest", "capabilities"): (
        "What the portal user may do besides looking: manage_endpoints, read_secrets, retry, "
        "send_test; default all but read_secrets."
    ),
    ("PortalLink", "url"): "The link; opening it starts a session of this tenant.",
    ("PortalLink", "expires_at"): "When the link stops opening the portal.",
    ("PortalLink", "tenant"): "The tenant the link opens.",
    ("PortalLink", "capabilities"): "What its sessions may do.",
    ("PortalRevokeRequest", "tenant"): "The tenant whose links and sessions end.",
    ("PortalRevoked", "tenant"): "The tenant whose links and sessions ended.",
    ("PortalRevoked", "revoked"): "Always true.",
    ("Endpoint", "id"): "The endpoint's id (ep_…).",
    ("Event", "id"): "The event's id.",
    ("EventDetail", "id"): "The event's id.",
    ("PublishResult", "id"): "The event's id.",
    ("Delivery", "id"): "The delivery's id (dlv_…).",
    ("DeliveryDetail", "id"): "The delivery's id (dlv_…).",
    ("PublishRequest", "id"): "Your id for the event: publishing it again creates nothing.",
    ("BatchRequest", "id"): "Your id for the event: publishing it again creates nothing.",
    ("PublishResult", "deliveries"): "How many deliveries the event made.",
    ("BatchResult", "deliveries"): "How many deliveries the event made.",
    ("EventDetail", "deliveries"): "A summary of each delivery of the event.",
    ("BatchRequest", "events"): "The events, at most 1000.",
    ("Health", "status"): "ok, ready, or unavailable.",
    ("EventType", "description"): "What the event means.",
    ("EventTypeCreate", "description"): "What the event means.",
    ("EventTypeUpdate", "description"): "What the event means.",
    ("EventType", "schema"): "The JSON Schema (draft 2020-12) every payload of the type must "
    "validate against; null: any object.",
    ("EventTypeCreate", "schema"): "A JSON Schema (draft 2020-12) every payload of the type "
    "must validate against; remote $ref are refused, never fetched.",
    ("EventTypeUpdate", "schema"): "A new JSON Schema (draft 2020-12) for the payloads; null "
    "removes it.",
    ("EventType", "example"): "An example payload (sent by endpoint tests and webhookd trigger).",
    ("EventTypeCreate", "example"): "An example payload; it must validate against the schema.",
    ("EventTypeUpdate", "example"): "A new example payload (it must validate); null removes it.",
    ("Endpoint", "secret"): "The signing secret; only in the answer to its creation.",
    ("Endpoint", "public_key"): "The Ed25519 public key of the secret (whpk_…); only in the "
    "answer to its creation, and only for signature.algorithm ed25519.",
    ("RotateRequest", "algorithm"): "Switch the standard scheme's algorithm with this "
    "rotation: hmac-sha256 or ed25519 (a secret of that kind is generated unless given). "
    "Default: the kind of the secret given, else the endpoint's algorithm.",
    ("RotateRequest", "secret"): "The new secret: whsec_… (hmac-sha256) or whsk_… (ed25519, "
    "base64 of a 32-byte Ed25519 seed) for the standard scheme; default generated.",
}
PARAMETERS = {
    "limit": "Items per page, 1-250.",
    "cursor": "next_cursor of the previous page.",
    "tenant": "Only this tenant's.",
    "active": "Only active (true) or inactive (false) endpoints.",
    "type": "Only events of this type.",
    "since": "Only those created at or after this time (RFC 3339).",
    "until": "Only those created before this time (RFC 3339).",
    "endpoint_id": "The endpoint's id.",
    "event_id": "The event's id.",
    "delivery_id": "The delivery's id.",
    "event_type": "Only deliveries of events of this type.",
    "status": "Only deliveries in this state.",
    "name": "The event type's name.",
    "Idempotency-Key": "Makes the publish idempotent, like the body's id.",
    "traceparent": (
        "W3C trace context of the caller: kept with the event, and every request sent for "
        "it carries a traceparent in that trace. An invalid one is ignored."
    ),
}
