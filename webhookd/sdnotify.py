"""The systemd service-manager notification protocol (``sd_notify``).

This module owns everything webhookd says to the service manager: readiness,
reload and shutdown state, free-form status text and watchdog keep-alives.
It speaks the wire protocol directly (one ``KEY=VALUE`` per line, sent as a
single datagram to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``) so that
the daemon needs no native library and behaves identically with or without a
service manager: when ``$NOTIFY_SOCKET`` is unset every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_loop"]

log = logging.getLogger("webhookd.sdnotify")

# Bounded so that a wedged service manager can delay the event loop by at most
# this long instead of forever; the manager normally drains its queue at once.
_SEND_TIMEOUT_S = 1.0


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _one_line(text: str) -> str:
    # The protocol is newline-separated: a newline inside a value would let
    # arbitrary text (say, an upstream error message) inject "READY=1" or
    # "STOPPING=1" into the datagram.
    return " ".join(text.splitlines())


class Notifier:
    """Sends state notifications to the service manager that started us.

    Build one with :meth:`from_env`. Every method is safe to call whether or
    not a service manager is listening and none of them ever raises.
    """

    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        """Create a notifier for ``address`` as found in ``$NOTIFY_SOCKET``.

        ``address`` is a filesystem path or ``@name`` for the Linux abstract
        namespace; ``None`` (or an unusable value) disables the notifier.
        """
        self._address: str | None = None
        if address:
            if address.startswith("/"):
                self._address = address
            elif address.startswith("@") and len(address) > 1:
                # The kernel spells abstract socket names with a leading NUL.
                self._address = "\0" + address[1:]
            else:
                # Relative paths and other transports (e.g. vsock) are not
                # something this daemon is ever started with; refuse them
                # rather than resolve a relative path against our cwd.
                log.warning("ignoring unsupported NOTIFY_SOCKET address %r", address)
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        return cls(
            environ.get("NOTIFY_SOCKET"),
            watchdog_usec=_parse_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=_parse_int(environ.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        """Whether a service manager asked for notifications."""
        return self._address is not None

    def notify(self, *assignments: str) -> None:
        """Send ``assignments`` (``"KEY=VALUE"`` strings) as one datagram.

        One datagram per call matters: the manager applies a datagram's
        assignments together, e.g. ``RELOADING=1`` with its ``MONOTONIC_USEC``.
        Failures are logged (a warning the first time, debug after that) and
        swallowed: the daemon must keep delivering webhooks even if the
        manager's socket has gone away.
        """
        if self._address is None or not assignments:
            return
        payload = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.sendto(payload, self._address)
        except OSError as exc:
            if self._warned:
                log.debug("sd_notify send failed: %s", exc)
            else:
                self._warned = True
                log.warning(
                    "cannot notify the service manager at %r: %s "
                    "(further failures are logged at debug level)",
                    self._address.replace("\0", "@", 1),
                    exc,
                )

    def ready(self, status: str | None = None) -> None:
        """Startup (or a reload) is complete and the daemon is serving."""
        if status is None:
            self.notify("READY=1")
        else:
            self.notify("READY=1", f"STATUS={_one_line(status)}")

    def reloading(self) -> None:
        """A reload has started; follow it with :meth:`ready` when done.

        systemd >= 253 requires ``MONOTONIC_USEC`` alongside ``RELOADING=1`` to
        match the notification to the reload request (``Type=notify-reload``);
        older managers ignore the extra field.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        """Shutdown has begun (deliveries are draining)."""
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        """Set the one-line status shown by ``systemctl status``."""
        self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Tell the manager the daemon is alive and healthy."""
        self.notify("WATCHDOG=1")

    def watchdog_interval_s(self) -> float | None:
        """Seconds between watchdog pings, or ``None`` if none are expected.

        This is half of ``WATCHDOG_USEC``, the margin systemd recommends. It is
        ``None`` when the notifier is disabled, when ``WATCHDOG_USEC`` is unset
        or not positive, or when ``WATCHDOG_PID`` names another process (the
        variables were inherited and the watchdog is not ours to feed).
        """
        if self._address is None or self._watchdog_usec is None or self._watchdog_usec <= 0:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000


async def watchdog_loop(notifier: Notifier, is_healthy: Callable[[], bool]) -> None:
    """Ping the watchdog every ``watchdog_interval_s`` while healthy.

    Returns at once when no watchdog is configured; otherwise runs until
    cancelled. Skipping pings while ``is_healthy()`` is false (or raises) is
    the point: the manager then declares the service hung and restarts it,
    which is the only remedy for a wedged event loop or a dead worker.
    """
    interval = notifier.watchdog_interval_s()
    if interval is None:
        return
    while True:
        try:
            healthy = is_healthy()
        except Exception:
            log.exception("health check raised; withholding the watchdog ping")
            healthy = False
        if healthy:
            notifier.watchdog()
        await asyncio.sleep(interval)
