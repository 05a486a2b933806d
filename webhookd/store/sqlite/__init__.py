"""The SQLite backend: the embedded default, one daemon per database file.

store.py is the `Store` (and the only module here the composition root names); writer.py
the group-commit writer that owns the one write connection and its thread; batches.py the
merged writes of a batch (publishes, outcomes); view.py this daemon's endpoints in
memory; handoff.py the offers through which a publish claims fresh deliveries for the
dispatcher; rows.py rows to objects; migrations.py the schema, versioned with PRAGMA
user_version. Names of SQLiteStore that are not in the `Store` interface (after_commit,
tell_due, fan_out, refresh_endpoint_health, offers) are for these modules only.

Shared state between the database thread and the event loop
-----------------------------------------------------------

Jobs run in the database thread while the event loop goes on serving the API and the
dispatcher. Everything both sides touch, and the rule that keeps it safe:

- The endpoint view (view.EndpointView): changed only on the event loop (after the
  commit that changed the database, and by the dispatcher's disable_in_view), each
  change under the view's lock. The database thread reads it only by single lookups
  (`get`: one dict operation, atomic) and through `snapshot()`, an immutable tuple of
  every endpoint that a change replaces (never mutates); a missing snapshot is built
  under the same lock, so no change happens while the dict is walked. The fan-out of a
  publish never walks the dict itself.
- The hand-over offers (handoff.Offers): set on the event loop, taken in the database
  thread, all behind the offers' lock. `take` first reads two fields without it, a
  benign race: at worst a slot freed at that instant is not used by this publish.
- Results and callbacks cross by hand-off only: a job's arguments are not touched by
  the event loop once submitted; what a job returns, and the after-commit callbacks it
  asked for (cache updates, the subscriber, hand-overs), reach the event loop through
  the batch's future and run there, between two batches.
- The writer's figures (commits, busy_s, commit_s, commit_counts, healthy): written
  only by the database thread, read by the event loop for /metrics without a lock; a
  scrape may see one batch's figures half updated, never a broken value.
- The write connection and the transaction's callback lists: the database thread only.
- The event-type catalog, the subscriber and this daemon's identity: the event loop
  only (no job reads them).
"""

from webhookd.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
