"""The SQLite schema, versioned with PRAGMA user_version.

Each entry of MIGRATIONS takes the database from version i to i+1. Never edit a released
migration; append a new one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the outbox
    """
    CREATE TABLE event_types (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );

    CREATE TABLE endpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL,
        tenant TEXT,
        description TEXT NOT NULL DEFAULT '',
        metadata TEXT NOT NULL DEFAULT '{}',
        events TEXT NOT NULL DEFAULT '["*"]',
        active INTEGER NOT NULL DEFAULT 1,
        disabled_reason TEXT,
        secret TEXT NOT NULL,
        previous_secrets TEXT NOT NULL DEFAULT '[]',
        signature TEXT NOT NULL DEFAULT '{"scheme":"standard"}',
        format TEXT NOT NULL DEFAULT '"json"',
        headers TEXT NOT NULL DEFAULT '{}',
        delay_s REAL NOT NULL DEFAULT 0,
        rate_limit_per_s REAL,
        max_in_flight INTEGER,
        ordered INTEGER NOT NULL DEFAULT 0,
        last_success_at INTEGER,
        failing_since INTEGER,
        deleted_at INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX endpoints_tenant ON endpoints(tenant, seq) WHERE deleted_at IS NULL;

    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        tenant TEXT,
        payload BLOB NOT NULL,
        body_hash BLOB,
        deliver_at INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX events_created ON events(created_at);
    CREATE INDEX events_type ON events(type, seq);
    CREATE INDEX events_tenant ON events(tenant, seq);

    CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        event_id TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        event_type TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        tenant TEXT,
        status TEXT NOT NULL,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        format_index INTEGER NOT NULL DEFAULT 0,
        manual INTEGER NOT NULL DEFAULT 0,
        resume_at INTEGER,
        next_attempt_at INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    -- The claim index: only pending rows are in it, ordered by due time per endpoint, so a
    -- claim reads O(batch) entries however large the backlog.
    CREATE INDEX deliveries_due ON deliveries(endpoint_id, next_attempt_at)
        WHERE status = 'pending';
    -- Publish order per endpoint, for ordered endpoints.
    CREATE INDEX deliveries_ordered ON deliveries(endpoint_id, seq) WHERE status = 'pending';
    CREATE INDEX deliveries_event ON deliveries(event_id);
    CREATE INDEX deliveries_endpoint ON deliveries(endpoint_id, seq);
    CREATE INDEX deliveries_status ON deliveries(status, seq);
    CREATE INDEX deliveries_delivering ON deliveries(status) WHERE status = 'delivering';

    CREATE TABLE attempts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        trigger TEXT NOT NULL,
        format TEXT NOT NULL,
        request_headers TEXT NOT NULL,
        status_code INTEGER,
        response_headers TEXT NOT NULL,
        response_body TEXT NOT NULL,
        error_kind TEXT,
        error_message TEXT
    );
    CREATE INDEX attempts_delivery ON attempts(delivery_id, number);
    """,
    # 2: how an endpoint is reached: a forward proxy URL, and TLS material as a JSON object
    # of PEM texts ({"client_cert", "client_key", "ca"}); NULL for none.
    """
    ALTER TABLE endpoints ADD COLUMN proxy TEXT;
    ALTER TABLE endpoints ADD COLUMN tls TEXT;
    """,
    # 3: event ids are unique per tenant (NULL counts as one tenant), not across tenants:
    # one tenant's ids must neither conflict with nor reveal another's. Deliveries point at
    # their event by its row key (seq); `event_id` stays as the public id they show. SQLite
    # cannot drop a column's UNIQUE or change a foreign key in place, so both tables are
    # rebuilt (the runner turns foreign keys off around migrations, so dropping the old
    # tables cascades nothing, and checks them before committing). The AUTOINCREMENT
    # counters are carried over: seqs of purged rows are never handed out again.
    """
    CREATE TABLE events_v3 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        type TEXT NOT NULL,
        tenant TEXT,
        payload BLOB NOT NULL,
        body_hash BLOB,
        deliver_at INTEGER,
        created_at INTEGER NOT NULL
    );
    INSERT INTO events_v3(seq, id, type, tenant, payload, body_hash, deliver_at, created_at)
        SELECT seq, id, type, tenant, payload, body_hash, deliver_at, created_at FROM events;

    CREATE TABLE deliveries_v3 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        event_seq INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        tenant TEXT,
        status TEXT NOT NULL,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        format_index INTEGER NOT NULL DEFAULT 0,
        manual INTEGER NOT NULL DEFAULT 0,
        resume_at INTEGER,
        next_attempt_at INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    -- Event ids were unique until now, so the join finds each delivery's one event.
    INSERT INTO deliveries_v3(seq, id, event_seq, event_id, event_type, endpoint_id, tenant,
        status, attempt_count, failures, format_index, manual, resume_at, next_attempt_at,
        created_at, updated_at)
        SELECT d.seq, d.id, e.seq, d.event_id, d.event_type, d.endpoint_id, d.tenant,
        d.status, d.attempt_count, d.failures, d.format_index, d.manual, d.resume_at,
        d.next_attempt_at, d.created_at, d.updated_at
        FROM deliveries d JOIN events e ON e.id = d.event_id;

    DELETE FROM sqlite_sequence WHERE name IN ('events_v3', 'deliveries_v3');
    INSERT INTO sqlite_sequence(name, seq)
        SELECT name || '_v3', seq FROM sqlite_sequence WHERE name IN ('events', 'deliveries');
    DROP TABLE deliveries;
    DROP TABLE events;
    ALTER TABLE events_v3 RENAME TO events;
    ALTER TABLE deliveries_v3 RENAME TO deliveries;

    -- The idempotency lookup (by id, then tenant) and the uniqueness it relies on.
    CREATE UNIQUE INDEX events_id ON events(id, IFNULL(tenant, ''));
    CREATE INDEX events_created ON events(created_at);
    CREATE INDEX events_type ON events(type, seq);
    CREATE INDEX events_tenant ON events(tenant, seq);
    CREATE INDEX deliveries_due ON deliveries(endpoint_id, next_attempt_at)
        WHERE status = 'pending';
    CREATE INDEX deliveries_ordered ON deliveries(endpoint_id, seq) WHERE status = 'pending';
    -- An event's deliveries, and the cascade when an event is purged.
    CREATE INDEX deliveries_event ON deliveries(event_seq);
    CREATE INDEX deliveries_endpoint ON deliveries(endpoint_id, seq);
    CREATE INDEX deliveries_status ON deliveries(status, seq);
    CREATE INDEX deliveries_delivering ON deliveries(status) WHERE status = 'delivering';
    """,
    # 4: the one row the readiness check rewrites, to prove that a write reaches the file
    # (a read, or a transaction that changes nothing, succeeds on a full disk too).
    """
    CREATE TABLE write_probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        written_at INTEGER NOT NULL
    );
    """,
    # 5: the console (webhookd/store/sqlite/console.py). The delivery log pages by tenant,
    # by event type and by time window; charts read attempts by start time. The key that
    # signs console sessions and portal links, and each tenant's last portal revocation.
    """
    CREATE INDEX deliveries_tenant ON deliveries(tenant, seq);
    CREATE INDEX deliveries_type ON deliveries(event_type, seq);
    CREATE INDEX deliveries_created ON deliveries(created_at);
    CREATE INDEX attempts_started ON attempts(started_at);
    CREATE TABLE console_settings (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE portal_revocations (
        tenant TEXT PRIMARY KEY,
        revoked_at INTEGER NOT NULL
    );
    """,
    # 6: a paused endpoint's deliveries stay pending and are not claimed until unpaused.
    """
    ALTER TABLE endpoints ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: receiver-facing options and the event fields that go with them. Endpoints: how
    # webhookd authenticates to the receiver (JSON, secrets included: write-only in the
    # API), a content filter (JSON) and channels (a JSON list; NULL: every channel).
    # Events: their channels (JSON list), the publisher's W3C traceparent, and when their
    # payload was erased. Event types: a JSON Schema for the payload and an example (JSON).
    """
    ALTER TABLE endpoints ADD COLUMN auth TEXT;
    ALTER TABLE endpoints ADD COLUMN filter TEXT;
    ALTER TABLE endpoints ADD COLUMN channels TEXT;
    ALTER TABLE events ADD COLUMN channels TEXT;
    ALTER TABLE events ADD COLUMN traceparent TEXT;
    ALTER TABLE events ADD COLUMN payload_erased_at INTEGER;
    ALTER TABLE event_types ADD COLUMN schema TEXT;
    ALTER TABLE event_types ADD COLUMN example TEXT;
    """,
]
