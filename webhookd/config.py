"""The YAML configuration: loading, validation and the frozen dataclasses it becomes.

Every key is optional. Unknown keys and bad values are errors that name the key and say
what was expected ("delivery.timeout_s: expected a number <= 30, got 'x'"); the command
line turns them into exit code 78.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yarl import URL

from webhookd import schemas

EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
TENANT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
MIN_API_KEY_LEN = 32
MAX_TIMEOUT_S = 30.0


class ConfigError(Exception):
    """A configuration problem; `problems` lists one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str = field(repr=False)
    tenant: str | None = None


@dataclass(frozen=True)
class EventTypeDecl:
    name: str
    description: str = ""
    # A JSON Schema (draft 2020-12) for the payload and an example payload (checked
    # against it at load: webhookd.schemas); None: none.
    schema: dict[str, Any] | None = None
    example: dict[str, Any] | None = None


@dataclass(frozen=True)
class DeliveryConfig:
    workers: int = 64
    max_in_flight_per_endpoint: int = 10
    timeout_s: float = 30.0
    retry_schedule_s: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    jitter: float = 0.2
    disable_after_s: float = 432000
    max_response_bytes: int = 20480
    shutdown_grace_s: float = 20.0
    # http://[user:pass@]host[:port] (port 80 when absent); kept out of repr, since its
    # password is a secret.
    proxy: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SecurityConfig:
    https_only: bool = True
    allow_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsConfig:
    max_payload_bytes: int = 262144
    max_batch_bytes: int = 16777216
    # Open API connections; past it a new one is closed at once.
    max_connections: int = 1024
    # A request whose head and body have not all arrived this long after it began (or
    # after the connection opened) is dropped.
    request_read_timeout_s: float = 30.0
    # An idle kept-alive API connection is closed after this.
    keepalive_s: float = 75.0
    # Parsed so that a config with it is accepted; None: no cap.
    max_endpoints_per_tenant: int | None = None


@dataclass(frozen=True)
class RetentionConfig:
    days: float = 30
    # Payloads older than this are erased, the rest of the log kept (None: `days`).
    payload_days: float | None = None

    @property
    def payload_window_days(self) -> float:
        return self.days if self.payload_days is None else self.payload_days


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class MetricsConfig:
    require_auth: bool = False


@dataclass(frozen=True)
class ConsoleConfig:
    """The operator console and tenant portal (webhookd/console/)."""

    enabled: bool = True
    # Origins that may embed the tenant portal in a frame (CSP frame-ancestors).
    frame_ancestors: tuple[str, ...] = ()
    session_ttl_s: float = 43200.0


@dataclass(frozen=True)
class ClusterConfig:
    """Several daemons on one PostgreSQL database (ignored on SQLite)."""

    # How long a claim holds: a dead daemon's deliveries are pending again within this, and
    # a daemon silent for about this long is taken for dead. Default delivery.timeout_s + 60.
    lease_s: float = MAX_TIMEOUT_S + 60.0
    heartbeat_s: float = 10.0


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry traces (webhookd/tracing.py); off while otlp_endpoint is None."""

    # The OTLP/HTTP collector's base URL: spans are posted to <otlp_endpoint>/v1/traces.
    otlp_endpoint: str | None = None
    service_name: str = "webhookd"
    # The share of new traces kept; a publish with a traceparent follows its sampled flag.
    sample_ratio: float = 1.0
    # Sent with every export (a collector's API key): kept out of repr and logs.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # One export request, retries included.
    timeout_s: float = 10.0

    @property
    def traces_url(self) -> str | None:
        """Where spans are posted: otlp_endpoint + /v1/traces (as given when it ends so)."""
        if self.otlp_endpoint is None:
            return None
        base = self.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:8080"
    database: str = "./webhookd.db"
    api_keys: tuple[ApiKey, ...] = ()
    event_types: tuple[EventTypeDecl, ...] = ()
    delivery: DeliveryConfig = DeliveryConfig()
    security: SecurityConfig = SecurityConfig()
    limits: LimitsConfig = LimitsConfig()
    retention: RetentionConfig = RetentionConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    cluster: ClusterConfig = ClusterConfig()
    console: ConsoleConfig = ConsoleConfig()
    tracing: TracingConfig = TracingConfig()

    @property
    def listen_address(self) -> ListenAddress:
        return parse_listen(self.listen)

    @property
    def database_shown(self) -> str:
        """`database` fit for a log line: a PostgreSQL password in it is hidden."""
        return redact_dsn(self.database)


# A password in a libpq URI (user:password@) or key/value string or URI query
# (password=...), for redact_dsn.
_DSN_PASSWORDS = (
    re.compile(r"(?<=://)([^/@:?#]*):[^/?#]*@"),
    re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE),
)


def redact_dsn(dsn: str) -> str:
    """`dsn` with any password replaced by ***."""
    text = _DSN_PASSWORDS[0].sub(r"\1:***@", dsn)
    return _DSN_PASSWORDS[1].sub(r"\1***", text)


@dataclass(frozen=True)
class ListenAddress:
    host: str | None = None
    port: int | None = None
    unix_path: str | None = None

    @property
    def is_loopback(self) -> bool:
        if self.unix_path is not None:
            return True
        host = self.host or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def parse_listen(value: str) -> ListenAddress:
    """Parse `host:port`, `[v6]:port` or `unix:/path`; raises ValueError with the reason."""
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(
                "a unix socket path must be absolute, e.g. unix:/run/webhookd/api.sock"
            )
        return ListenAddress(unix_path=path)
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError("")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0-65535")
    return ListenAddress(host=host, port=port)


# --- the validating reader ---------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Reads one mapping, collecting problems with the dotted key path of each."""

    def __init__(self, data: Mapping[str, Any], path: str, problems: list[str]) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, expected: str, got: Any) -> None:
        self.problems.append(f"{self.key(name)}: expected {expected}, got {_show(got)}")

    def get(
        self,
        name: str,
        default: T,
        convert: Callable[[Any], T],
        expected: str,
        *,
        secret: bool = False,
    ) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        raw = self.data[name]
        try:
            return convert(raw)
        except (TypeError, ValueError, OverflowError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            if secret:  # never echo what may be a key
                self.problems.append(f"{self.key(name)}: expected {expected}")
            else:
                self.fail(name, expected + detail, raw)
            return default

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.problems.append(f"{self.key(str(name))}: unknown key{self._guess(name)}")

    def _guess(self, name: Any) -> str:
        """' (did you mean delivery.timeout_s?)' for a near miss of a key this mapping
        knows (every key its reader asked for), or ''."""
        close = difflib.get_close_matches(str(name), sorted(self.seen), n=1)
        return f" (did you mean {self.key(close[0])}?)" if close else ""


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Any:
    def convert(raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise TypeError
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise ValueError
        if hi is not None and value > hi:
            raise ValueError
        return value

    return convert


def _integer(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def convert(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TypeError
        if raw < lo or (hi is not None and raw > hi):
            raise ValueError
        return raw

    return convert


def _boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise TypeError
    return raw


def _string(raw: Any) -> str:
    if not isinstance(raw, str):
        raise TypeError
    return raw


def _section(parent: _Reader, name: str) -> _Reader | None:
    parent.seen.add(name)
    raw = parent.data.get(name)
    if raw is None:
        return _Reader({}, parent.key(name), parent.problems)
    if not isinstance(raw, Mapping):
        parent.fail(name, "a mapping", raw)
        return None
    return _Reader(raw, parent.key(name), parent.problems)


def _read_delivery(r: _Reader) -> DeliveryConfig:
    d = DeliveryConfig()
    workers = r.get("workers", d.workers, _integer(1, 10000), "an integer 1-10000")
    per_ep = r.get(
        "max_in_flight_per_endpoint",
        d.max_in_flight_per_endpoint,
        _integer(1, 10000),
        "an integer 1-10000",
    )
    if per_ep > workers:
        r.problems.append(
            f"{r.key('max_in_flight_per_endpoint')}: expected at most delivery.workers "
            f"({workers}), got {per_ep}"
        )
    schedule = r.get("retry_schedule_s", d.retry_schedule_s, _schedule, "a list of numbers >= 0")
    return DeliveryConfig(
        workers=workers,
        max_in_flight_per_endpoint=per_ep,
        timeout_s=r.get(
            "timeout_s",
            d.timeout_s,
            _number(0, MAX_TIMEOUT_S, lo_open=True),
            f"a number > 0 and <= {MAX_TIMEOUT_S:g}",
        ),
        retry_schedule_s=schedule,
        jitter=r.get("jitter", d.jitter, _number(0, 1), "a number 0-1"),
        disable_after_s=r.get(
            "disable_after_s", d.disable_after_s, _number(0, lo_open=True), "a number > 0"
        ),
        max_response_bytes=r.get(
            "max_response_bytes",
            d.max_response_bytes,
            _integer(0, 1048576),
            "an integer 0-1048576",
        ),
        shutdown_grace_s=r.get(
            "shutdown_grace_s", d.shutdown_grace_s, _number(0, 3600), "a number 0-3600"
        ),
        proxy=_read_proxy(r),
    )


def _schedule(raw: Any) -> tuple[float, ...]:
    if not isinstance(raw, list) or len(raw) > 100:
        raise TypeError
    convert = _number(0, 7 * 86400)
    return tuple(convert(x) for x in raw)


def _read_proxy(r: _Reader) -> str | None:
    """`delivery.proxy`; a problem names the key and the reason but never echoes the value,
    which may hold the proxy's password."""
    r.seen.add("proxy")
    raw = r.data.get("proxy")
    if raw is None:
        return None
    try:
        return proxy_url(raw)
    except ValueError as exc:
        r.problems.append(f"{r.key('proxy')}: expected {PROXY_FORM}: {exc}")
        return None


PROXY_FORM = "http://host:port or http://user:pass@host:port"
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


def proxy_url(raw: Any) -> str:
    """Check a forward proxy URL (delivery.proxy and the endpoint field `proxy`) and return
    it unchanged: scheme http, a host name or IP literal, port 1-65535 (80 when absent),
    optional user[:password], nothing else. The reason given never quotes the value."""
    if not isinstance(raw, str):
        raise ValueError("not a string")
    if len(raw) > 2048 or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ValueError("too long, or has spaces or control characters")
    try:
        url = URL(raw)
        port = url.explicit_port
    except ValueError:
        raise ValueError("not a URL") from None
    if url.scheme != "http" or not raw.lower().startswith("http://"):
        raise ValueError("it must start with http:// (https targets go through CONNECT)")
    host = url.raw_host
    if not host or not (_HOSTNAME_RE.fullmatch(host) or _is_ip(host)):
        raise ValueError("the host is missing or not a valid name or address")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be 1-65535")
    if (
        url.raw_path not in ("", "/")
        or url.raw_query_string
        or url.raw_fragment
        or "?" in raw
        or "#" in raw
    ):
        raise ValueError("a proxy URL has no path, query or fragment")
    if (url.raw_password is not None or "@" in raw) and not url.raw_user:
        raise ValueError("credentials need a user name")
    if url.user is not None and ":" in url.user:  # Basic auth cannot carry it (RFC 7617)
        raise ValueError("the user name cannot contain ':'")
    return raw


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _networks(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise TypeError
    out = []
    for item in raw:
        if not isinstance(item, str):
            raise TypeError
        ipaddress.ip_network(item, strict=False)  # raises ValueError naming the bad one
        out.append(item)
    return tuple(out)


def _read_api_keys(
    parent: _Reader, environ: Mapping[str, str], problems: list[str]
) -> tuple[ApiKey, ...]:
    parent.seen.add("api_keys")
    raw = parent.data.get("api_keys")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        parent.fail("api_keys", "a list of {name, key or key_env, tenant}", raw)
        return ()
    keys: list[ApiKey] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        path = f"api_keys[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{path}: expected a mapping with name and key or key_env")
            continue
        key = _read_api_key(_Reader(item, path, problems), environ, names)
        if key is not None:
            keys.append(key)
    return tuple(keys)


def _read_api_key(r: _Reader, environ: Mapping[str, str], names: set[str]) -> ApiKey | None:
    """One entry of `api_keys` (its name added to `names`), or None after a problem."""
    path, problems = r.path, r.problems
    name = r.get("name", "", _string, "a string")
    if not name:
        problems.append(f"{path}.name: expected a non-empty string")
    elif name in names:
        problems.append(f"{path}.name: duplicate key name {name!r}")
    names.add(name)
    key = r.get("key", "", _string, "a string", secret=True)
    key_env = r.get("key_env", "", _string, "an environment variable name")
    key_file = r.get("key_file", "", _string, "a file path")
    tenant = r.get("tenant", None, _optional_tenant, "null or a tenant name")
    r.finish()
    if sum(1 for x in (key, key_env, key_file) if x) > 1:
        problems.append(f"{path}: give one of key, key_env or key_file")
        return None
    found = _key_value(r, key, key_env, key_file, environ)
    if found is None:
        return None
    key, where = found
    if not key:
        problems.append(f"{path}: expected key, key_env or key_file")
        return None
    if len(key) < MIN_API_KEY_LEN:
        # The key itself is never echoed: only its length.
        problems.append(f"{where}: expected at least {MIN_API_KEY_LEN} characters, got {len(key)}")
        return None
    return ApiKey(name=name, key=key, tenant=tenant)


def _key_value(
    r: _Reader, key: str, key_env: str, key_file: str, environ: Mapping[str, str]
) -> tuple[str, str] | None:
    """The key an entry gives (inline, from the environment or from a file) and the words
    that say where it came from; None after a problem."""
    path = r.path
    if key_env:
        if key_env not in environ:
            r.problems.append(f"{path}.key_env: environment variable {key_env} is not set")
            return None
        return environ[key_env], f"{path}.key_env ({key_env})"
    if key_file:
        # ${CREDENTIALS_DIRECTORY} and the like are expanded, for systemd credentials.
        file_path = _expand(key_file, environ)
        try:
            text = Path(file_path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            r.problems.append(f"{path}.key_file: cannot read {file_path}: {reason}")
            return None
        return text, f"{path}.key_file ({file_path})"
    return key, f"{path}.key"


def _expand(text: str, environ: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        return environ.get(m.group(1) or m.group(2), m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def _optional_tenant(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not TENANT_RE.fullmatch(raw):
        raise ValueError
    return raw


def _read_event_types(parent: _Reader, problems: list[str]) -> tuple[EventTypeDecl, ...]:
    parent.seen.add("event_types")
    raw = parent.data.get("event_types")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        parent.fail("event_types", "a list of {name, description}", raw)
        return ()
    out: list[EventTypeDecl] = []
    for i, item in enumerate(raw):
        path = f"event_types[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping):
            problems.append(f"{path}: expected a mapping with name and description")
            continue
        r = _Reader(item, path, problems)
        name = r.get("name", "", _string, "a string")
        description = r.get("description", "", _string, "a string")
        schema, example = _read_type_schema(r)
        r.finish()
        if not EVENT_TYPE_RE.fullmatch(name) or len(name) > 200:
            problems.append(
                f"{path}.name: expected dot-separated segments of [a-zA-Z0-9_-], got {_show(name)}"
            )
            continue
        out.append(EventTypeDecl(name, description, schema=schema, example=example))
    return tuple(out)


def _read_type_schema(r: _Reader) -> tuple[Any, Any]:
    """An event type's `schema` and `example`: a valid draft 2020-12 schema, and a payload
    object that validates against it (webhookd.schemas); problems name the place."""
    r.seen.update(("schema", "example"))
    schema, example = r.data.get("schema"), r.data.get("example")
    _, found = schemas.check_pair(schema, example)
    for part, inside, msg in found:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in inside)
        r.problems.append(f"{r.key(part)}{where}: {msg}")
    return (None, None) if found else (schema, example)


def config_from_mapping(data: Any, environ: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raises ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"(top level): expected a mapping of keys, got {_show(data)}"])
    top = _Reader(data, "", problems)
    d = Config()
    # Keyword arguments are evaluated in order: problems are listed in the file's order.
    config = Config(
        listen=top.get("listen", d.listen, _listen_value, "host:port or unix:/path"),
        database=_read_database(top, env, d.database),
        api_keys=_read_api_keys(top, env, problems),
        event_types=_read_event_types(top, problems),
        delivery=_read_section(top, "delivery", d.delivery, _read_delivery),
        security=_read_section(top, "security", d.security, _read_security),
        limits=_read_section(top, "limits", d.limits, _read_limits),
        retention=_read_section(top, "retention", d.retention, _read_retention),
        log=_read_section(top, "log", d.log, _read_log),
        metrics=_read_section(top, "metrics", d.metrics, _read_metrics),
        console=_read_section(top, "console", d.console, _read_console),
        tracing=_read_section(top, "tracing", d.tracing, _read_tracing),
    )
    config = dataclasses.replace(
        config, cluster=_read_section(top, "cluster", d.cluster, _cluster_reader(config))
    )
    top.finish()
    if not problems and not config.api_keys and not config.listen_address.is_loopback:
        problems.append(
            f"listen: {config.listen} is not a loopback address and no api_keys are "
            "configured; add api_keys (an unauthenticated API serves only on loopback or a "
            "unix socket)"
        )
    if problems:
        raise ConfigError(problems)
    return config


def _read_database(top: _Reader, environ: Mapping[str, str], default: str) -> str:
    """`database` (a SQLite file, or a postgresql:// URI), or the value of the environment
    variable `database_env` names (so that a password need not sit in the YAML)."""
    database = top.get(
        "database", "", _nonempty_string, "a file path or a postgresql:// URI", secret=True
    )
    name = top.get("database_env", "", _nonempty_string, "an environment variable name")
    if database and name:
        top.problems.append("database_env: give one of database or database_env")
        return default
    if name:
        value = environ.get(name, "")
        if not value:
            top.problems.append(f"database_env: environment variable {name} is not set")
            return default
        return value
    return database or default


def _listen_value(raw: Any) -> str:
    text = _string(raw)
    parse_listen(text)
    return text


def _read_section(parent: _Reader, name: str, default: T, read: Callable[[_Reader], T]) -> T:
    """A section read by `read`, or `default` when it is not a mapping (a problem)."""
    s = _section(parent, name)
    if s is None:
        return default
    value = read(s)
    s.finish()
    return value


def _read_security(s: _Reader) -> SecurityConfig:
    return SecurityConfig(
        https_only=s.get("https_only", True, _boolean, "true or false"),
        allow_networks=s.get("allow_networks", (), _networks, "a list of CIDRs"),
    )


def _read_limits(s: _Reader) -> LimitsConfig:
    d = LimitsConfig()
    return LimitsConfig(
        max_payload_bytes=s.get(
            "max_payload_bytes",
            d.max_payload_bytes,
            _integer(1, 64 * 1024 * 1024),
            "an integer 1-67108864",
        ),
        max_batch_bytes=s.get(
            "max_batch_bytes",
            d.max_batch_bytes,
            _integer(1, 1024 * 1024 * 1024),
            "an integer 1-1073741824",
        ),
        max_connections=s.get(
            "max_connections", d.max_connections, _integer(1, 1_000_000), "an integer 1-1000000"
        ),
        request_read_timeout_s=s.get(
            "request_read_timeout_s",
            d.request_read_timeout_s,
            _number(0, 86400, lo_open=True),
            "a number > 0 and <= 86400",
        ),
        keepalive_s=s.get(
            "keepalive_s",
            d.keepalive_s,
            _number(0, 86400, lo_open=True),
            "a number > 0 and <= 86400",
        ),
        max_endpoints_per_tenant=s.get(
            "max_endpoints_per_tenant",
            d.max_endpoints_per_tenant,
            _optional(_integer(1)),
            "null or an integer >= 1",
        ),
    )


def _optional(convert: Callable[[Any], T]) -> Callable[[Any], T | None]:
    def optional(raw: Any) -> T | None:
        return None if raw is None else convert(raw)

    return optional


def _read_retention(s: _Reader) -> RetentionConfig:
    d = RetentionConfig()
    days = s.get("days", d.days, _number(0, lo_open=True), "a number > 0")
    expected = f"a number > 0 and <= retention.days ({days:g})"
    payload_days = s.get("payload_days", None, _optional(_number(0, days, lo_open=True)), expected)
    return RetentionConfig(days=days, payload_days=payload_days)


def _read_log(s: _Reader) -> LogConfig:
    return LogConfig(
        level=s.get("level", "info", _choice("debug", "info", "warning", "error"), _LEVELS),
        format=s.get("format", "text", _choice("text", "json"), "text or json"),
    )


# A claim's lease outlives the request it covers by at least this much: a lease that ends
# while the request is still open lets another daemon send the same delivery in parallel.
LEASE_MARGIN_S = 60.0
MIN_LEASE_MARGIN_S = 5.0


def _cluster_reader(config: Config) -> Callable[[_Reader], ClusterConfig]:
    timeout_s = config.delivery.timeout_s

    def read(s: _Reader) -> ClusterConfig:
        floor_s = timeout_s + MIN_LEASE_MARGIN_S
        lease_s = s.get(
            "lease_s",
            timeout_s + LEASE_MARGIN_S,
            _number(floor_s, 86400),
            f"a number of seconds {floor_s:g}-86400 (delivery.timeout_s + at least "
            f"{MIN_LEASE_MARGIN_S:g})",
        )
        # Three beats fit in a lease: one or two missed (a slow database, a pause) do not
        # make a live daemon look dead.
        heartbeat_s = s.get(
            "heartbeat_s",
            ClusterConfig.heartbeat_s,
            _number(0.1, 3600),
            "a number of seconds 0.1-3600",
        )
        if heartbeat_s > lease_s / 3:
            s.problems.append(
                f"{s.key('heartbeat_s')}: expected at most a third of cluster.lease_s "
                f"({lease_s / 3:g}), got {heartbeat_s:g}"
            )
        return ClusterConfig(lease_s=lease_s, heartbeat_s=heartbeat_s)

    return read


_ORIGIN_RE = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)


def _origins(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise TypeError
    for origin in raw:
        if not _ORIGIN_RE.fullmatch(origin):
            raise ValueError(f"{origin!r} is not an origin such as https://app.example.com")
    return tuple(raw)


def _read_console(s: _Reader) -> ConsoleConfig:
    d = ConsoleConfig()
    return ConsoleConfig(
        enabled=s.get("enabled", d.enabled, _boolean, "true or false"),
        frame_ancestors=s.get(
            "frame_ancestors", d.frame_ancestors, _origins, "a list of origins (scheme://host)"
        ),
        session_ttl_s=s.get(
            "session_ttl_s", d.session_ttl_s, _number(60, 604800), "a number of seconds 60-604800"
        ),
    )


def _read_tracing(s: _Reader) -> TracingConfig:
    d = TracingConfig()
    return TracingConfig(
        otlp_endpoint=_read_otlp_endpoint(s),
        service_name=s.get(
            "service_name", d.service_name, _bounded_string(1, 255), "a string of 1-255 characters"
        ),
        sample_ratio=s.get("sample_ratio", d.sample_ratio, _number(0, 1), "a number 0-1"),
        headers=_read_tracing_headers(s),
        timeout_s=s.get(
            "timeout_s", d.timeout_s, _number(0, 300, lo_open=True), "a number > 0 and <= 300"
        ),
    )


def _read_otlp_endpoint(s: _Reader) -> str | None:
    """`tracing.otlp_endpoint`: an http(s) URL with a host and nothing after the path; a
    problem never echoes the value."""
    s.seen.add("otlp_endpoint")
    raw = s.data.get("otlp_endpoint")
    if raw is None:
        return None
    expected = "an http:// or https:// URL such as http://127.0.0.1:4318"
    try:
        url = URL(raw) if isinstance(raw, str) and raw.isprintable() and " " not in raw else None
        port = url.explicit_port if url is not None else None
    except ValueError:
        url = port = None
    if url is None or url.scheme not in ("http", "https") or not url.raw_host:
        s.problems.append(f"{s.key('otlp_endpoint')}: expected {expected}")
    elif "@" in raw:
        s.problems.append(
            f"{s.key('otlp_endpoint')}: expected a URL without user or password "
            "(put the collector's credentials in tracing.headers)"
        )
    elif url.raw_query_string or url.raw_fragment or "?" in raw or "#" in raw:
        s.problems.append(f"{s.key('otlp_endpoint')}: expected {expected}, without query")
    elif port is not None and not 1 <= port <= 65535:
        s.problems.append(f"{s.key('otlp_endpoint')}: expected a port 1-65535")
    else:
        return str(raw)
    return None


_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")


def _read_tracing_headers(s: _Reader) -> tuple[tuple[str, str], ...]:
    """`tracing.headers`: a mapping of header names to strings; values (a collector's
    credentials) are never echoed."""
    s.seen.add("headers")
    raw = s.data.get("headers")
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or len(raw) > 50:
        s.problems.append(f"{s.key('headers')}: expected a mapping of at most 50 header names")
        return ()
    out: list[tuple[str, str]] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
            s.problems.append(f"{s.key('headers')}: {_show(name)} is not a header name")
        elif not isinstance(value, str) or len(value) > 8192 or not value.isprintable():
            s.problems.append(
                f"{s.key('headers')}.{name}: expected a string of printable characters"
            )
        else:
            out.append((name, value))
    return tuple(out)


def _bounded_string(lo: int, hi: int) -> Callable[[Any], str]:
    def convert(raw: Any) -> str:
        text = _string(raw)
        if not lo <= len(text) <= hi:
            raise ValueError
        return text

    return convert


def _read_metrics(s: _Reader) -> MetricsConfig:
    return MetricsConfig(require_auth=s.get("require_auth", False, _boolean, "true or false"))


_LEVELS = "one of debug, info, warning, error"


def _choice(*options: str) -> Callable[[Any], str]:
    def convert(raw: Any) -> str:
        if not isinstance(raw, str) or raw.lower() not in options:
            raise ValueError
        return raw.lower()

    return convert


def _nonempty_string(raw: Any) -> str:
    text = _string(raw)
    if not text:
        raise ValueError
    return text


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last
    one silently, hiding a mistake)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                mark = key_node.start_mark
                raise ValueError(f"key {key!r} appears twice (line {mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML file at `path`; None means the embedded defaults."""
    if path is None:
        return config_from_mapping({}, environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ValueError as exc:  # e.g. an integer with too many digits, a duplicate key
        raise ConfigError([f"{path}: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}"]) from None
    return config_from_mapping(data, environ)
