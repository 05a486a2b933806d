"""Handing freshly published deliveries straight to the dispatcher.

Normally a published delivery is inserted `pending`, the dispatcher is woken, and it
claims the delivery in a transaction of its own (marking it `delivering`) before the
request can start: a second commit, and a second fsync, between publish and first
attempt. When the dispatcher has free slots for an endpoint and nothing of that endpoint
is due already, it offers them here; publishing then inserts up to that many of the
endpoint's due deliveries as `delivering` in the publish transaction itself and hands
them over once it commits. A crash in between is safe for the same reason as after a
claim: deliveries left `delivering` are requeued at startup.

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
        self.receiver: Receiver | None = None

    # --- the event loop's side --------------------------------------------------------

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
                if left > 0:
                    self._in_transit[endpoint_id] = left
                else:
                    self._in_transit.pop(endpoint_id, None)

    # --- the database thread's side ---------------------------------------------------

    def take(self, endpoint_id: str) -> bool:
        """One offered slot of this endpoint, if there is one (then it is in transit)."""
        if not self._open:
            return False
        with self._lock:
            n = self._open.get(endpoint_id, 0)
            if n <= 0 or self.receiver is None:
                return False
            self._open[endpoint_id] = n - 1
            self._in_transit[endpoint_id] = self._in_transit.get(endpoint_id, 0) + 1
            return True
