"""A throwaway PostgreSQL cluster for the tests, and the backend parametrization.

Loaded from conftest.py (`pytest_plugins`). The cluster is made once per session, only
when a test asks for PostgreSQL: `initdb` on a temporary directory, a server listening on
a unix socket in that directory alone (no TCP), fsync off, stopped at the end. When the
tests run as root (CI does), initdb refuses to, so the cluster is made and run as an
unprivileged user (`postgres` when the Debian package made one, else `nobody`).

Each test gets a database of its own, copied from a template that is already migrated
(`pg_dsn`), or an empty one (`pg_empty_dsn`) for the tests of migrations themselves.

`backend` is "sqlite" unless the test's module is in PARAMETRIZED, where it runs once per
backend; the `store` and daemon fixtures of conftest.py build on it. Without PostgreSQL
installed the PostgreSQL runs are skipped with the reason, or fail when CI=true.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Test modules whose store- and daemon-level tests run against both backends.
PARAMETRIZED = frozenset(
    {
        "test_api",
        "test_endpoint_ops",
        "test_fanout",
        "test_health",
        "test_opevents",
        "test_pg_store",
        "test_store",
        "test_tenant_ids",
    }
)
BACKENDS = ("sqlite", "postgres")
TEMPLATE = "webhookd_template"
SUPERUSER = "webhookd"
_START_TIMEOUT_S = 60


@dataclass
class Cluster:
    datadir: Path
    socket_dir: Path
    bindir: Path
    run_as: str | None  # the unprivileged user when tests run as root
    port: int = 5432

    def dsn(self, dbname: str) -> str:
        # A libpq URI, the form `database:` takes in the config.
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.run_as is not None:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=_START_TIMEOUT_S, check=False
        )


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: PATH, `pg_config --bindir`, or Debian's directories."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(os.path.realpath(initdb)).parent
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            candidates.append(out.stdout.strip())
    # Newest version first.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("tests run as root and there is no postgres or nobody user to run initdb")


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL is not available for the tests: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def start_cluster(base: Path) -> Cluster:
    bindir = find_bindir()
    if bindir is None:
        _unavailable("initdb/pg_ctl not found (PATH, pg_config --bindir, /usr/lib/postgresql)")
        raise AssertionError("unreachable")
    run_as = _unprivileged_user()
    datadir, socket_dir = base / "data", base / "sock"
    socket_dir.mkdir()
    if run_as is not None:
        user = pwd.getpwnam(run_as)
        for p in (base, socket_dir):
            os.chown(p, user.pw_uid, user.pw_gid)
    cluster = Cluster(datadir, socket_dir, bindir, run_as)
    init = cluster.run(
        str(bindir / "initdb"),
        "-D",
        str(datadir),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
    )
    if init.returncode != 0:
        _unavailable(f"initdb failed: {init.stderr.strip()[-800:]}")
    options = (
        "-c listen_addresses='' "
        f"-c unix_socket_directories='{socket_dir}' "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c max_connections=400 -c shared_buffers=64MB"
    )
    start = cluster.run(
        str(bindir / "pg_ctl"),
        "-D",
        str(datadir),
        "-l",
        str(base / "server.log"),
        "-o",
        options,
        "-w",
        "-t",
        str(_START_TIMEOUT_S),
        "start",
    )
    if start.returncode != 0:
        log = (base / "server.log").read_text(errors="replace")[-1500:]
        _unavailable(f"pg_ctl start failed: {start.stderr.strip()}\n{log}")
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    cluster.run(
        str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir), "-m", "immediate", "stop"
    )


def _admin(cluster: Cluster, *statements: str) -> None:
    import psycopg

    # Bounded, so that a stuck statement fails the test with its text instead of running
    # into the test timeout.
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET statement_timeout = '60s'")
        for statement in statements:
            conn.execute(statement.encode())


def _make_template(cluster: Cluster) -> None:
    """A database with the schema already applied, copied for each test."""
    import asyncio

    import psycopg

    from webhookd.store.postgres.migrate import migrate

    _admin(cluster, f"CREATE DATABASE {TEMPLATE}")

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(
            cluster.dsn(TEMPLATE), autocommit=True
        ) as conn:
            await migrate(conn)

    asyncio.run(run())
    _admin(cluster, f"ALTER DATABASE {TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    # Not under pytest's tmp_path: its directories are 0700 root, which the unprivileged
    # server user cannot traverse.
    base = Path(tempfile.mkdtemp(prefix="webhookd-pg-"))
    try:
        cluster = start_cluster(base)
        try:
            _make_template(cluster)
            yield cluster
        finally:
            stop_cluster(cluster)
    finally:
        shutil.rmtree(base, ignore_errors=True)


_names = itertools.count()


def _database(cluster: Cluster, template: str) -> Iterator[str]:
    name = f"t{os.getpid()}_{next(_names)}"
    _admin(cluster, f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield cluster.dsn(name)
    finally:
        _admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """The DSN of a fresh database of this test's own, with webhookd's schema."""
    yield from _database(pg_cluster, TEMPLATE)


@pytest.fixture
def pg_empty_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """The DSN of a fresh, empty database of this test's own."""
    yield from _database(pg_cluster, "template1")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if (
        "backend" in metafunc.fixturenames
        and module in PARAMETRIZED
        and metafunc.definition.get_closest_marker("sqlite_only") is None
    ):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: a test of the SQLite backend's own mechanics (one backend)"
    )


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend this test runs on: "sqlite" or "postgres"."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The `database` setting for this test's backend: a SQLite file or a DSN."""
    if backend == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")
        return dsn
    return str(tmp_path / "webhookd.db")


def new_store(backend: str, database: str) -> Any:
    """An unopened store of this backend on `database` (a SQLite path or a DSN)."""
    if backend == "postgres":
        from webhookd.store.postgres import PostgresStore

        return PostgresStore(database)
    from webhookd.store.sqlite import SQLiteStore

    return SQLiteStore(database)
