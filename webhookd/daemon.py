"""The composition root: startup order, signals, reload and shutdown order.

The only module that touches signals. Signal handlers only set state; the main coroutine
acts on it.

Startup: config -> logging -> store and migrations -> requeue deliveries left
`delivering` -> HTTP client -> dispatcher -> API listening -> ready.
Shutdown (SIGTERM/SIGINT): stop the API, stop claiming, let open requests finish within
`delivery.shutdown_grace_s`, give the rest back to `pending`, publish the operational
events those last outcomes raised, close. A second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from webhookd import __version__, http1, logs, tracing
from webhookd.api import create_app
from webhookd.api.connections import CONNECTIONS, Connections
from webhookd.api.context import State
from webhookd.config import Config, ConfigError, load_config
from webhookd.dispatcher import Dispatcher
from webhookd.metrics import Metrics
from webhookd.netguard import AddressPolicy, GuardedResolver
from webhookd.opevents import OpEvents
from webhookd.retention import Retention
from webhookd.sdnotify import Notifier, watchdog_loop
from webhookd.store import open_store
from webhookd.store.interface import Claimed, Endpoint, Member, Outcome, StorageError, Store

log = logging.getLogger("webhookd")

RESTART_ONLY = ("listen", "database", "tracing")
LISTEN_BACKLOG = 128
# How long stopping waits for API requests in progress to be answered.
API_SHUTDOWN_S = 5.0


class StartupError(Exception):
    pass


class Daemon:
    def __init__(
        self, config: Config, config_path: str | None = None, *, listen: str | None = None
    ) -> None:
        """`listen`: the command line's --listen, already applied to `config`; a reload
        keeps it over the file's `listen`."""
        self.config = config
        self.config_path = config_path
        self.listen_override = listen
        # The backend config.database names (StorageError if it cannot be had).
        self.store: Store = open_store(config)
        self.member = Member.this_process()
        self.store.join(self.member, self._in_flight)
        self.state = State(config=config, store=self.store)
        self.notifier = Notifier.from_env()
        self.client: http1.Client | None = None
        self.resolver: GuardedResolver | None = None
        self.dispatcher: Dispatcher | None = None
        self.opevents: OpEvents | None = None
        self.metrics = Metrics()
        self.state.extra["metrics"] = self.metrics
        # None with tracing off; then nothing of OpenTelemetry is even imported.
        self.tracer = tracing.start(config.tracing)
        if self.tracer is not None:
            self.state.extra[tracing.TRACER] = self.tracer
        self.retention = Retention(
            self.store,
            lambda: self.config.retention.days,
            payload_days=lambda: self.config.retention.payload_window_days,
        )
        self._retention_task: asyncio.Task[None] | None = None
        self.runner: web.AppRunner | None = None
        self.connections: Connections | None = None
        self.keepalive_s = config.limits.keepalive_s  # aiohttp's, fixed when it starts
        self.listener: asyncio.Server | None = None
        self.policy = AddressPolicy(config.security.allow_networks)
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._signals = 0
        self._watchdog: asyncio.Task[None] | None = None
        self.bound: list[str] = []

    def _in_flight(self) -> int:
        return self.dispatcher.stats.in_flight if self.dispatcher is not None else 0

    # --- startup --------------------------------------------------------------------

    async def start(self) -> None:
        await self._open_store()
        await self._start_dispatcher()
        await self._listen()
        # Everything allocated so far lives as long as the process: keep it out of the
        # collector's way, and collect the young generation less often (each delivery
        # allocates many short-lived objects that reference counting frees anyway).
        gc.freeze()
        gc.set_threshold(20000, 20, 20)
        self.state.starting = False
        self.notifier.ready(status=f"serving on {', '.join(self.bound)}")
        self._retention_task = asyncio.create_task(self.retention.run(), name="webhookd-retention")
        self._watchdog = asyncio.create_task(
            watchdog_loop(
                self.notifier, lambda: self.dispatcher is not None and self.dispatcher.running
            ),
            name="webhookd-watchdog",
        )
        cfg = self.config
        log.info(
            "webhookd started",
            extra={
                "event": "startup",
                "version": __version__,
                "listen": ",".join(self.bound),
                "database": cfg.database_shown,  # a DSN password is not logged
                "endpoints": len(list(self.store.endpoints())),
                "event_types": len(await self.store.list_event_types()),
                "api_keys": len(cfg.api_keys),
                "workers": cfg.delivery.workers,
                "https_only": cfg.security.https_only,
            },
        )

    async def _open_store(self) -> None:
        await self.store.open()
        await self.store.sync_event_types(self.config.event_types)
        requeued = await self.store.requeue_interrupted()
        if requeued:
            log.info(
                "requeued deliveries interrupted by a crash",
                extra={"event": "requeued_interrupted", "count": requeued},
            )

    async def _start_dispatcher(self) -> None:
        self.resolver = GuardedResolver(self.policy)
        self.client = http1.Client(self.resolver)
        self.opevents = OpEvents(self.store)
        opevents = self.opevents
        metrics = self.metrics

        def on_outcome(c: Claimed, ep: Endpoint, o: Outcome) -> None:
            opevents.on_outcome(c, ep, o)
            try:
                metrics.outcome(c, ep, o)
            except Exception:
                log.exception("metrics update failed", extra={"event": "metrics_bug"})

        self.dispatcher = Dispatcher(
            self.store,
            self.client,
            self.config.delivery,
            on_outcome=on_outcome,
            tracer=self.tracer,
        )
        self.state.dispatcher = self.dispatcher
        await self.dispatcher.start()

    async def _listen(self) -> None:
        """Serve the API through aiohttp's runner and its low-level server, each accepted
        connection wrapped by webhookd.api.connections (limits and read deadlines)."""
        cfg = self.config
        app = create_app(self.state)
        self.connections = app[CONNECTIONS]
        self.keepalive_s = cfg.limits.keepalive_s
        self.runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=API_SHUTDOWN_S,
            keepalive_timeout=self.keepalive_s,
        )
        await self.runner.setup()
        assert self.runner.server is not None
        factory = self.connections.factory(self.runner.server)
        address = cfg.listen_address
        loop = asyncio.get_running_loop()
        try:
            if address.unix_path is not None:
                Path(address.unix_path).parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(address.unix_path)
                self.listener = await loop.create_unix_server(
                    factory, address.unix_path, backlog=LISTEN_BACKLOG
                )
            else:
                assert address.port is not None
                self.listener = await loop.create_server(
                    factory,
                    address.host,
                    address.port,
                    reuse_address=True,
                    backlog=LISTEN_BACKLOG,
                )
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None
        self.bound = [_describe(s.getsockname()) for s in self.listener.sockets]

    # --- running ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        # A write past the file-size limit (RLIMIT_FSIZE, e.g. LimitFSIZE= in the unit)
        # must fail with EFBIG, a storage error the daemon rides out, instead of killing
        # the process. CPython ignores it at startup already; this keeps it so whoever
        # embeds or starts us.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def _on_stop_signal(self, name: str) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second stop signal: exiting now", extra={"event": "forced_exit"})
            os._exit(1)
        log.info("stop requested", extra={"event": "stopping", "signal": name})
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        """Run until a stop signal, handling reloads meanwhile."""
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (stop, reload):
                fut.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self.reload()

    async def reload(self) -> None:
        self.notifier.reloading()
        try:
            try:
                new = self._with_override(load_config(self.config_path))
            except ConfigError as exc:
                log.error(
                    "reload rejected; keeping the running config",
                    extra={"event": "reload_rejected", "problems": exc.problems},
                )
                return
            old = self.config
            restart = [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)]
            if new.limits.keepalive_s > self.keepalive_s:
                # aiohttp's own keep-alive timeout was set at startup; a lower value
                # applies at once (webhookd.api.connections), a higher one only then.
                restart.append("limits.keepalive_s")
            self.policy = AddressPolicy(new.security.allow_networks)
            if self.client is not None:
                self.client.policy = self.policy
            logs.apply_level(new.log.level)
            await self.store.sync_event_types(new.event_types)
            # The store's share (PostgreSQL: the claims' default limit, the cluster keys).
            restart += await self.store.reconfigure(new)
            if self.dispatcher is not None:
                self.dispatcher.update_config(new.delivery)
            self.config = new
            self.state.config = new
            log.info(
                "config reloaded",
                extra={
                    "event": "reloaded",
                    "needs_restart": ",".join(restart) or "none",
                },
            )
            if restart:
                log.warning(
                    "some changed settings apply only after a restart",
                    extra={"event": "reload_needs_restart", "keys": ",".join(restart)},
                )
        finally:
            self.notifier.ready()

    def _with_override(self, new: Config) -> Config:
        """The reloaded config with --listen kept over the file's `listen`: the address
        the daemon is bound to (and the unix socket shutdown removes) stays the same, and
        the file's own value is not a change that needs a restart."""
        if self.listen_override is None:
            return new
        new = dataclasses.replace(new, listen=self.listen_override)
        if not new.api_keys and not new.listen_address.is_loopback:
            # The rule startup applied to --listen, applied to the reloaded keys.
            raise ConfigError(
                [
                    f"--listen: {new.listen} is not a loopback address and the reloaded "
                    "config has no api_keys"
                ]
            )
        return new

    # --- shutdown -------------------------------------------------------------------

    async def shutdown(self) -> None:
        self.state.stopping = True
        self.notifier.stopping()
        for task in (self._watchdog, self._retention_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.listener is not None:
            self.listener.close()
        if self.runner is not None:
            # Idle connections close now, the others once answered (API_SHUTDOWN_S).
            await self.runner.cleanup()
        if self.connections is not None:
            self.connections.close_all()
        if self.dispatcher is not None:
            await self.dispatcher.stop(self.config.delivery.shutdown_grace_s)
        if self.opevents is not None:
            # After the last outcome, before the store closes: queued operational events
            # are stored (and delivered after the next start).
            await self.opevents.drain()
        if self.client is not None:
            await self.client.close()
        if self.resolver is not None:
            await self.resolver.close()
        if self.tracer is not None:
            # After the last attempt: its span is among those exported now.
            await self.tracer.close()
        await self.store.close()
        address = self.config.listen_address
        if address.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.unix_path)
        log.info("webhookd stopped", extra={"event": "stopped"})


def _describe(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return f"unix:{address}"


async def serve(config: Config, config_path: str | None, *, listen: str | None = None) -> int:
    """Run the daemon until stopped; `listen` is --listen (already applied to `config`)."""
    try:
        daemon = Daemon(config, config_path, listen=listen)
    except StorageError as exc:
        log.error(str(exc), extra={"event": "startup_failed"})
        return 1
    daemon.install_signal_handlers()
    try:
        await daemon.start()
    except (StartupError, StorageError) as exc:
        log.error(str(exc), extra={"event": "startup_failed"})
        await daemon.shutdown()
        return 1
    await daemon.wait()
    await daemon.shutdown()
    return 0
