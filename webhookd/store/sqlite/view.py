"""This daemon's endpoints in memory: read by every publish's fan-out (in the database
thread) and by the dispatcher's hot path (on the event loop), changed on the event loop
after each committed change. The rule that makes this safe is in the package docstring.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from webhookd.matching import routed
from webhookd.store.models import Endpoint, NewEvent

# Fields the fan-out and the hand-over never read: a change of only these (an attempt's
# outcome, often) keeps the snapshot, so busy delivery does not rebuild it.
HEALTH_FIELDS = frozenset({"last_success_at", "failing_since"})


class EndpointView:
    """Endpoints by id, and an immutable snapshot of them all for the fan-out.

    Any thread: `get`, `snapshot`, `fan_out`. The event loop only: `put`, `drop`,
    `replace_all`, `values`."""

    def __init__(self) -> None:
        # Held by every change, and while the snapshot is built, so that no change can
        # happen during the walk over the dict.
        self._lock = threading.Lock()
        self._by_id: dict[str, Endpoint] = {}
        self._all: tuple[Endpoint, ...] | None = None  # None: built at the next use

    # --- any thread ---------------------------------------------------------------------

    def get(self, endpoint_id: str) -> Endpoint | None:
        # One dict lookup: atomic under the GIL (and under the dict's own lock in a
        # free-threaded build), whatever the event loop does meanwhile.
        return self._by_id.get(endpoint_id)

    def snapshot(self) -> tuple[Endpoint, ...]:
        """Every endpoint as of the last change that matters to the fan-out. The tuple is
        never changed, only replaced; a change made while a caller walks it is seen by
        its next call."""
        snap = self._all
        if snap is None:
            with self._lock:
                snap = self._all
                if snap is None:
                    snap = self._all = tuple(self._by_id.values())
        return snap

    def fan_out(self, ev: NewEvent, created_at: int) -> list[Endpoint]:
        """The endpoints `ev` goes to (webhookd.matching.routed), or the one a test event
        names."""
        if ev.only_endpoint is not None:
            ep = self.get(ev.only_endpoint)
            return [ep] if ep else []
        return routed(self.snapshot(), ev, created_at)

    # --- the event loop only ------------------------------------------------------------

    def values(self) -> list[Endpoint]:
        # Only the event loop changes the dict, so it may walk it without the lock.
        return list(self._by_id.values())

    def put(self, ep: Endpoint, *, health_only: bool = False) -> None:
        """Add or replace one endpoint; `health_only`: only HEALTH_FIELDS differ from the
        version it replaces (the snapshot keeps the old one, which the fan-out reads the
        same)."""
        with self._lock:
            self._by_id[ep.id] = ep
            if not health_only:
                self._all = None

    def drop(self, endpoint_id: str) -> None:
        with self._lock:
            if self._by_id.pop(endpoint_id, None) is not None:
                self._all = None

    def replace_all(self, endpoints: Iterable[Endpoint]) -> None:
        fresh = {ep.id: ep for ep in endpoints}
        with self._lock:
            self._by_id = fresh
            self._all = None
