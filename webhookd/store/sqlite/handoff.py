"""Handing freshly published deliveries straight to the dispatcher.

Normally a published delivery is inserted `pending`, the dispatcher is woken, and it
claims the delivery in a transaction of its own (marking it `delivering`) before the
request can start: a second commit, and a second fsync, between publish and first
attempt. When the dispatcher has free slots for an endpoint and nothing of that endpoint
is due already, it offers them here; publishing then inserts up to that many of the
endpoint's due deliveries as `delivering` in the publish transaction itself and hands
them over once it commits. A crash in between is safe for the same reason as after a
claim: deliveries left `delivering` are requeued at startup.

The dispatcher keeps the offers up to date one endpoint at a time (`set`, whenever that
endpoint's room changes) and bounds them all together by its free workers (`budget`,
at every wake-up), so that its work does not grow with the number of endpoints.

The offers are set on the event loop and taken in the database thread, so they live
behind a lock. A taken slot is "in transit" until the publish transaction is over: on
commit the claimed deliveries reach the dispatcher, on rollback nothing does; either way
the slot is settled, so the dispatcher never offers it twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from webhookd.store.models import Claimed

Receiver = Callable[[list[Claimed]], None]


class Offers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._in_transit: dict[str, int] = {}
        self._transit_total = 0
        # Slots that may still be taken across all endpoints; None: no bound.
        self._free: int | None = None
        self.receiver: Receiver | None = None

    # --- the event loop's side --------------------------------------------------------

    def set(self, endpoint_id: str, room: int) -> None:
        """Offer this endpoint's free room less what is already in transit (0: none)."""
        with self._lock:
            n = room - self._in_transit.get(endpoint_id, 0)
            if n > 0:
                self._open[endpoint_id] = n
            else:
                self._open.pop(endpoint_id, None)

    def budget(self, free: int | None) -> None:
        """At most `free` slots, less those in transit, may be taken over all endpoints
        together until the next call (None: no bound but each endpoint's own)."""
        with self._lock:
            self._free = None if free is None else free - self._transit_total

    def replace(self, room: Mapping[str, int]) -> None:
        """Offer, per endpoint, its free room less what is already in transit; every
        endpoint not named gets no offer."""
        with self._lock:
            transit = self._in_transit
            self._open = {
                endpoint_id: n - transit.get(endpoint_id, 0)
                for endpoint_id, n in room.items()
                if n > transit.get(endpoint_id, 0)
            }

    def close(self, receiver: Receiver | None = None) -> None:
        """No more offers (the dispatcher stops); what is in transit still settles."""
        with self._lock:
            self._open = {}
            # == and not `is`: a bound method is a new object at every access.
            if receiver is None or receiver == self.receiver:
                self.receiver = None

    def in_transit(self, endpoint_id: str) -> int:
        return self._in_transit.get(endpoint_id, 0)

    def settle(self, counts: Mapping[str, int]) -> None:
        """Taken slots whose publish transaction is over (committed or rolled back)."""
        with self._lock:
            for endpoint_id, n in counts.items():
                left = self._in_transit.get(endpoint_id, 0) - n
                self._transit_total -= min(n, self._in_transit.get(endpoint_id, 0))
                if left > 0:
                    self._in_transit[endpoint_id] = left
                else:
                    self._in_transit.pop(endpoint_id, None)

    # --- the database thread's side ---------------------------------------------------

    def take(self, endpoint_id: str) -> bool:
        """One offered slot of this endpoint, if there is one (then it is in transit)."""
        # Read without the lock: at worst a slot freed this instant is not used. A publish
        # to thousands of endpoints asks once per delivery; past the budget, cheaply.
        free = self._free
        if not self._open or (free is not None and free <= 0):
            return False
        with self._lock:
            n = self._open.get(endpoint_id, 0)
            if n <= 0 or self.receiver is None or (self._free is not None and self._free <= 0):
                return False
            if n > 1:
                self._open[endpoint_id] = n - 1
            else:
                del self._open[endpoint_id]
            if self._free is not None:
                self._free -= 1
            self._in_transit[endpoint_id] = self._in_transit.get(endpoint_id, 0) + 1
            self._transit_total += 1
            return True
