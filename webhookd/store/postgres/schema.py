"""The PostgreSQL schema, versioned in the one-row table `schema_version`.

Each entry of MIGRATIONS takes the database from version i to i+1, in one transaction;
webhookd/store/postgres/migrate.py runs them under an advisory lock, so daemons starting
together migrate once while the others wait. Never edit a released migration; append one.

Conventions shared with the SQLite schema (webhookd/store/migrations.py), so that both
backends give the same API answers: timestamps are integer milliseconds since the epoch
(bigint), JSON documents are stored as text exactly as written (jsonb would reorder the
keys of request headers and metadata), ids are the public prefixed strings, and `seq`
(an identity column) orders lists and backs the cursors.

The columns only PostgreSQL has are those several daemons need:
- deliveries.lease_owner / lease_token / lease_until / slot: a claim. `lease_token` comes
  from the sequence `lease_tokens` (strictly increasing: a fencing token), `slot` is the
  endpoint's concurrency slot (0 .. max_in_flight-1), unique among `delivering` rows.
- endpoints.rl_tokens / rl_updated_at: the endpoint's rate-limit token bucket, shared.
- daemons: one row per live daemon, for GET /v1/cluster and the reaper.
- webhookd_now_ms(): the database's clock in ms, for leases and heartbeats, so that
  daemons on hosts whose clocks disagree still agree on when a lease ends.
"""

from __future__ import annotations

# The advisory lock key under which migrations run (any constant bigint; "whkd" in hex).
MIGRATION_LOCK_KEY = 0x77686B64

MIGRATIONS: list[str] = [
    # 1: the outbox, with what claims across daemons need.
    """
    CREATE FUNCTION webhookd_now_ms() RETURNS bigint LANGUAGE sql STABLE
        AS $$ SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint $$;

    CREATE TABLE event_types (
        name text PRIMARY KEY,
        description text NOT NULL DEFAULT '',
        source text NOT NULL,
        created_at bigint NOT NULL
    );

    CREATE TABLE endpoints (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        url text NOT NULL,
        tenant text,
        description text NOT NULL DEFAULT '',
        metadata text NOT NULL DEFAULT '{}',
        events text NOT NULL DEFAULT '["*"]',
        active boolean NOT NULL DEFAULT true,
        disabled_reason text,
        secret text NOT NULL,
        previous_secrets text NOT NULL DEFAULT '[]',
        signature text NOT NULL DEFAULT '{"scheme":"standard"}',
        format text NOT NULL DEFAULT '"json"',
        headers text NOT NULL DEFAULT '{}',
        delay_s double precision NOT NULL DEFAULT 0,
        rate_limit_per_s double precision,
        max_in_flight integer,
        ordered boolean NOT NULL DEFAULT false,
        last_success_at bigint,
        failing_since bigint,
        deleted_at bigint,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        proxy text,
        tls text,
        -- The shared token bucket of rate_limit_per_s: tokens left at rl_updated_at (ms).
        rl_tokens double precision,
        rl_updated_at bigint
    );
    CREATE INDEX endpoints_tenant ON endpoints (tenant, seq) WHERE deleted_at IS NULL;

    CREATE TABLE events (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL,
        type text NOT NULL,
        tenant text,
        payload bytea NOT NULL,
        body_hash bytea,
        deliver_at bigint,
        created_at bigint NOT NULL
    );
    -- Event ids are unique per tenant (NULL counts as one tenant): the idempotency lookup,
    -- and what makes a repeat racing on another daemon a conflict instead of a duplicate.
    CREATE UNIQUE INDEX events_id ON events (id, COALESCE(tenant, ''));
    CREATE INDEX events_created ON events (created_at);
    CREATE INDEX events_type ON events (type, seq);
    CREATE INDEX events_tenant ON events (tenant, seq);

    CREATE SEQUENCE lease_tokens;

    CREATE TABLE deliveries (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        event_seq bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
        event_id text NOT NULL,
        event_type text NOT NULL,
        endpoint_id text NOT NULL,
        tenant text,
        status text NOT NULL,
        attempt_count integer NOT NULL DEFAULT 0,
        failures integer NOT NULL DEFAULT 0,
        format_index integer NOT NULL DEFAULT 0,
        manual boolean NOT NULL DEFAULT false,
        resume_at bigint,
        next_attempt_at bigint,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        -- The claim: which daemon holds it, its fencing token, until when (ms), and the
        -- endpoint's concurrency slot it occupies. NULL unless status = 'delivering'.
        lease_owner text,
        lease_token bigint,
        lease_until bigint,
        slot smallint
    ) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01);
    -- Claims: only pending rows, by due time, per endpoint and over all endpoints.
    CREATE INDEX deliveries_due ON deliveries (endpoint_id, next_attempt_at)
        WHERE status = 'pending';
    CREATE INDEX deliveries_due_all ON deliveries (next_attempt_at) WHERE status = 'pending';
    -- Publish order per endpoint among unfinished rows: the head of an ordered endpoint.
    CREATE INDEX deliveries_ordered ON deliveries (endpoint_id, seq)
        WHERE status IN ('pending', 'delivering');
    -- max_in_flight across daemons: a slot is held by one delivering row at a time.
    CREATE UNIQUE INDEX deliveries_slot ON deliveries (endpoint_id, slot)
        WHERE status = 'delivering';
    -- The reaper: claims whose lease ran out.
    CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'delivering';
    CREATE INDEX deliveries_owner ON deliveries (lease_owner) WHERE status = 'delivering';
    -- An event's deliveries, and the cascade when an event is purged.
    CREATE INDEX deliveries_event ON deliveries (event_seq);
    CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, seq);
    CREATE INDEX deliveries_status ON deliveries (status, seq);

    CREATE TABLE attempts (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        delivery_id text NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        number integer NOT NULL,
        started_at bigint NOT NULL,
        duration_ms integer NOT NULL,
        trigger text NOT NULL,
        format text NOT NULL,
        request_headers text NOT NULL,
        status_code integer,
        response_headers text NOT NULL,
        -- UTF-8 bytes: a receiver's body may hold NUL, which a text column refuses.
        response_body bytea NOT NULL,
        error_kind text,
        error_message text
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id, number);

    -- The daemons sharing this database (GET /v1/cluster, the reaper). Times in ms.
    CREATE TABLE daemons (
        id text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        version text NOT NULL,
        started_at bigint NOT NULL,
        heartbeat_at bigint NOT NULL,
        in_flight integer NOT NULL DEFAULT 0
    );
    CREATE INDEX daemons_heartbeat ON daemons (heartbeat_at);

    -- The row the readiness check rewrites, to prove that a write commits.
    CREATE TABLE write_probe (
        id integer PRIMARY KEY CHECK (id = 1),
        written_at bigint NOT NULL
    );
    """,
    # 2: the console (webhookd/store/postgres/console.py). The delivery log pages by
    # tenant, by event type and by time window; charts read attempts by start time. The
    # key that signs console sessions and portal links (shared by every daemon), and each
    # tenant's last portal revocation.
    """
    CREATE INDEX deliveries_tenant ON deliveries (tenant, seq);
    CREATE INDEX deliveries_type ON deliveries (event_type, seq);
    CREATE INDEX deliveries_created ON deliveries (created_at);
    CREATE INDEX attempts_started ON attempts (started_at);
    CREATE TABLE console_settings (
        name text PRIMARY KEY,
        value bytea NOT NULL
    );
    CREATE TABLE portal_revocations (
        tenant text PRIMARY KEY,
        revoked_at bigint NOT NULL
    );
    """,
    # 3: a paused endpoint's deliveries stay pending and are not claimed, by any daemon,
    # until unpaused.
    """
    ALTER TABLE endpoints ADD COLUMN paused boolean NOT NULL DEFAULT false;
    """,
    # 4: receiver-facing options and the event fields that go with them (as SQLite's
    # migration 7): endpoint auth, filter and channels; event channels, traceparent and
    # payload erasure time; event-type schema and example. JSON as text, as elsewhere.
    """
    ALTER TABLE endpoints ADD COLUMN auth text;
    ALTER TABLE endpoints ADD COLUMN filter text;
    ALTER TABLE endpoints ADD COLUMN channels text;
    ALTER TABLE events ADD COLUMN channels text;
    ALTER TABLE events ADD COLUMN traceparent text;
    ALTER TABLE events ADD COLUMN payload_erased_at bigint;
    ALTER TABLE event_types ADD COLUMN schema text;
    ALTER TABLE event_types ADD COLUMN example text;
    """,
]
