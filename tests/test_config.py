"""The YAML configuration: documented defaults, the documented example, and error
messages that name the key and say what was expected."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhookd.config import (
    ApiKey,
    Config,
    ConfigError,
    DeliveryConfig,
    EventTypeDecl,
    LimitsConfig,
    config_from_mapping,
    load_config,
    parse_listen,
)

API_KEY = "k" * 20 + "0123456789abcdefghij"  # 40 characters
ENV = {"WEBHOOKD_API_KEY": API_KEY}

# The example from the Configuration section of the product contract, verbatim.
CONTRACT_EXAMPLE = """\
listen: 127.0.0.1:8080          # host:port, or unix:/run/webhookd/api.sock
database: ./webhookd.db         # the SQLite file (the systemd unit uses /var/lib/webhookd/)
api_keys:                       # none: unauthenticated, loopback/unix socket only
  - name: backend
    key_env: WEBHOOKD_API_KEY   # or key: "…" (at least 32 characters)
    tenant: null                # a tenant name scopes the key
event_types:
  - name: call.completed
    description: A call ended and its recording is ready.
delivery:
  workers: 64                   # requests open at once, all endpoints together
  max_in_flight_per_endpoint: 10
  timeout_s: 30                 # whole request; at most 30
  retry_schedule_s: [5, 300, 1800, 7200, 18000, 36000, 36000]  # numbers, fractions allowed
  jitter: 0.2                   # 0 turns it off
  disable_after_s: 432000       # 5 days of failure without a success
  max_response_bytes: 20480     # of the response body kept in the log
  shutdown_grace_s: 20
security:
  https_only: true
  allow_networks: []            # CIDRs exempt from the address check, e.g. [127.0.0.0/8, "::1/128"]
limits:
  max_payload_bytes: 262144     # one event's payload
  max_batch_bytes: 16777216     # the whole body of POST /v1/events/batch
  max_connections: 1024         # open API connections; past it new ones are closed at once
  request_read_timeout_s: 30    # a request whose head and body have not arrived by then is dropped
  keepalive_s: 75               # an idle kept-alive API connection is closed after this
  max_endpoints_per_tenant: null # a number caps each tenant's endpoints (422 past it)
retention:
  days: 30                      # events, deliveries and attempts older than this are purged
log:
  level: info
  format: text                  # or json
metrics:
  require_auth: false
"""

SECTIONS = ("delivery", "security", "limits", "retention", "log", "metrics")


def problems_of(data: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, ENV if environ is None else environ)
    assert info.value.problems
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def write(tmp_path: Path, text: str, name: str = "webhookd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults --------------------------------------------------------------------------


def check_documented_defaults(c: Config) -> None:
    assert c.listen == "127.0.0.1:8080"
    assert c.database == "./webhookd.db"
    assert c.api_keys == ()
    assert c.event_types == ()
    d = c.delivery
    assert d.workers == 64
    assert d.max_in_flight_per_endpoint == 10
    assert d.timeout_s == 30
    assert list(d.retry_schedule_s) == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert d.jitter == 0.2
    assert d.disable_after_s == 432000
    assert d.max_response_bytes == 20480
    assert d.shutdown_grace_s == 20
    assert c.security.https_only is True
    assert list(c.security.allow_networks) == []
    assert c.limits.max_payload_bytes == 262144
    assert c.limits.max_batch_bytes == 16777216
    assert c.limits.max_connections == 1024
    assert c.limits.request_read_timeout_s == 30
    assert c.limits.keepalive_s == 75
    assert c.limits.max_endpoints_per_tenant is None
    assert c.retention.days == 30
    assert c.log.level == "info"
    assert c.log.format == "text"
    assert c.metrics.require_auth is False


def test_defaults_are_the_documented_ones() -> None:
    check_documented_defaults(Config())
    check_documented_defaults(config_from_mapping({}, {}))
    check_documented_defaults(config_from_mapping(None, {}))
    check_documented_defaults(load_config(None, {}))


def test_empty_sections_keep_the_defaults() -> None:
    c = config_from_mapping({name: None for name in SECTIONS}, {})
    check_documented_defaults(c)
    assert c == Config()


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), {}) == Config()
    assert load_config(write(tmp_path, "# only a comment\n"), {}) == Config()


def test_default_listen_is_loopback() -> None:
    addr = Config().listen_address
    assert (addr.host, addr.port, addr.is_loopback) == ("127.0.0.1", 8080, True)


# --- the contract's example ------------------------------------------------------------


def test_the_contract_example_loads(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, CONTRACT_EXAMPLE), ENV)
    check_documented_defaults(dataclasses.replace(c, api_keys=(), event_types=()))
    assert c.api_keys == (ApiKey(name="backend", key=API_KEY, tenant=None),)
    assert c.event_types == (
        EventTypeDecl("call.completed", "A call ended and its recording is ready."),
    )


def test_the_contract_example_every_key_is_known() -> None:
    data = yaml.safe_load(CONTRACT_EXAMPLE)
    config_from_mapping(data, ENV)
    for section in SECTIONS:
        for key in data[section]:
            trimmed = {**data, section: {k: v for k, v in data[section].items() if k != key}}
            config_from_mapping(trimmed, ENV)


def test_the_example_comment_networks_are_accepted() -> None:
    data = yaml.safe_load('security:\n  allow_networks: [127.0.0.0/8, "::1/128"]\n')
    c = config_from_mapping(data, {})
    assert c.security.allow_networks == ("127.0.0.0/8", "::1/128")


def test_fractional_schedule_and_other_values_are_kept() -> None:
    c = config_from_mapping(
        {
            "listen": "unix:/run/webhookd/api.sock",
            "database": "/var/lib/webhookd/webhookd.db",
            "delivery": {
                "workers": 8,
                "max_in_flight_per_endpoint": 8,
                "timeout_s": 2.5,
                "retry_schedule_s": [0.2, 0.4, 1],
                "jitter": 0,
                "disable_after_s": 60,
                "max_response_bytes": 0,
                "shutdown_grace_s": 0,
            },
            "security": {"https_only": False},
            "limits": {
                "max_payload_bytes": 1,
                "max_batch_bytes": 1024,
                "max_connections": 1,
                "request_read_timeout_s": 0.5,
                "keepalive_s": 1.5,
                "max_endpoints_per_tenant": 3,
            },
            "retention": {"days": 0.5},
            "log": {"level": "DEBUG", "format": "json"},
            "metrics": {"require_auth": True},
            "event_types": ["call.started", {"name": "a-b_c.D9"}],
        },
        {},
    )
    assert c.listen_address.unix_path == "/run/webhookd/api.sock"
    assert c.delivery == DeliveryConfig(
        workers=8,
        max_in_flight_per_endpoint=8,
        timeout_s=2.5,
        retry_schedule_s=(0.2, 0.4, 1.0),
        jitter=0,
        disable_after_s=60,
        max_response_bytes=0,
        shutdown_grace_s=0,
    )
    assert c.security.https_only is False
    assert (c.limits.max_payload_bytes, c.limits.max_batch_bytes) == (1, 1024)
    assert (c.limits.max_connections, c.limits.max_endpoints_per_tenant) == (1, 3)
    assert (c.limits.request_read_timeout_s, c.limits.keepalive_s) == (0.5, 1.5)
    assert c.retention.days == 0.5
    assert (c.log.level, c.log.format) == ("debug", "json")
    assert c.metrics.require_auth is True
    assert [e.name for e in c.event_types] == ["call.started", "a-b_c.D9"]


def test_an_empty_retry_schedule_is_allowed() -> None:
    assert config_from_mapping({"delivery": {"retry_schedule_s": []}}, {}).delivery == (
        dataclasses.replace(DeliveryConfig(), retry_schedule_s=())
    )


# --- unknown keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "dotted"),
    [
        ({"lisen": "127.0.0.1:8080"}, "lisen"),
        ({"api_key": []}, "api_key"),
        ({"delivery": {"timout_s": 5}}, "delivery.timout_s"),
        ({"security": {"https": True}}, "security.https"),
        ({"limits": {"max_payload": 1}}, "limits.max_payload"),
        ({"retention": {"dayz": 3}}, "retention.dayz"),
        ({"log": {"lvl": "info"}}, "log.lvl"),
        ({"metrics": {"auth": True}}, "metrics.auth"),
        ({"api_keys": [{"name": "a", "key": API_KEY, "scope": "x"}]}, "api_keys[0].scope"),
        ({"event_types": [{"name": "a.b", "desc": "x"}]}, "event_types[0].desc"),
    ],
)
def test_unknown_keys_are_named(data: dict[str, Any], dotted: str) -> None:
    [problem] = problems_of(data)
    assert problem.startswith(f"{dotted}: unknown key"), problem


def test_unknown_keys_are_all_listed_at_once() -> None:
    problems = problems_of({"a": 1, "delivery": {"b": 2}, "log": {"c": 3}})
    assert sorted(problems) == ["a: unknown key", "delivery.b: unknown key", "log.c: unknown key"]


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "delivery:\n  timout_s: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [
        "delivery.timout_s: unknown key (did you mean delivery.timeout_s?)"
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"lisen": "127.0.0.1:8080"}, "lisen: unknown key (did you mean listen?)"),
        ({"api_key": []}, "api_key: unknown key (did you mean api_keys?)"),
        ({"log": {"lvl": "info"}}, "log.lvl: unknown key (did you mean log.level?)"),
        (
            {"security": {"allow_network": []}},
            "security.allow_network: unknown key (did you mean security.allow_networks?)",
        ),
        (
            {"api_keys": [{"name": "a", "key": API_KEY, "tenat": "x"}]},
            "api_keys[0].tenat: unknown key (did you mean api_keys[0].tenant?)",
        ),
        # Nothing close: no guess.
        ({"delivery": {"colour": 1}}, "delivery.colour: unknown key"),
        ({"a": 1}, "a: unknown key"),
    ],
)
def test_unknown_keys_suggest_the_nearest_known_one(data: dict[str, Any], problem: str) -> None:
    assert problems_of(data) == [problem]


# --- bad values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"delivery": {"timeout_s": 31}}, "delivery.timeout_s: expected a number > 0 and <= 30"),
        ({"delivery": {"timeout_s": "x"}}, "delivery.timeout_s: expected a number > 0 and <= 30"),
        ({"delivery": {"timeout_s": True}}, "delivery.timeout_s: expected a number > 0 and <= 30"),
        ({"delivery": {"timeout_s": 0}}, "delivery.timeout_s: expected a number > 0"),
        ({"delivery": {"timeout_s": float("nan")}}, "delivery.timeout_s: expected a number"),
        ({"delivery": {"workers": 0}}, "delivery.workers: expected an integer 1-10000"),
        ({"delivery": {"workers": 2.5}}, "delivery.workers: expected an integer 1-10000"),
        ({"delivery": {"workers": "64"}}, "delivery.workers: expected an integer 1-10000"),
        ({"delivery": {"jitter": 2}}, "delivery.jitter: expected a number 0-1"),
        ({"delivery": {"jitter": -0.1}}, "delivery.jitter: expected a number 0-1"),
        ({"delivery": {"retry_schedule_s": "5"}}, "delivery.retry_schedule_s: expected a list"),
        ({"delivery": {"retry_schedule_s": 5}}, "delivery.retry_schedule_s: expected a list"),
        ({"delivery": {"retry_schedule_s": [5, -1]}}, "delivery.retry_schedule_s: expected"),
        ({"delivery": {"retry_schedule_s": [5, "x"]}}, "delivery.retry_schedule_s: expected"),
        ({"delivery": {"disable_after_s": 0}}, "delivery.disable_after_s: expected a number > 0"),
        (
            {"delivery": {"max_response_bytes": -1}},
            "delivery.max_response_bytes: expected an integer",
        ),
        ({"delivery": {"shutdown_grace_s": 3601}}, "delivery.shutdown_grace_s: expected a number"),
        (
            {"delivery": {"workers": 4, "max_in_flight_per_endpoint": 5}},
            "delivery.max_in_flight_per_endpoint: expected at most delivery.workers (4), got 5",
        ),
        (
            {"security": {"allow_networks": ["not-a-cidr"]}},
            "security.allow_networks: expected a list of CIDRs",
        ),
        ({"security": {"allow_networks": "10.0.0.0/8"}}, "security.allow_networks: expected"),
        ({"security": {"allow_networks": [10]}}, "security.allow_networks: expected"),
        ({"security": {"https_only": "yes"}}, "security.https_only: expected true or false"),
        ({"limits": {"max_payload_bytes": 0}}, "limits.max_payload_bytes: expected an integer"),
        ({"limits": {"max_batch_bytes": 2**31}}, "limits.max_batch_bytes: expected an integer"),
        ({"limits": {"max_connections": 0}}, "limits.max_connections: expected an integer"),
        ({"limits": {"max_connections": 1.5}}, "limits.max_connections: expected an integer"),
        ({"limits": {"max_connections": True}}, "limits.max_connections: expected an integer"),
        (
            {"limits": {"request_read_timeout_s": 0}},
            "limits.request_read_timeout_s: expected a number > 0",
        ),
        (
            {"limits": {"request_read_timeout_s": "30"}},
            "limits.request_read_timeout_s: expected a number > 0",
        ),
        ({"limits": {"keepalive_s": -1}}, "limits.keepalive_s: expected a number > 0"),
        ({"limits": {"keepalive_s": float("inf")}}, "limits.keepalive_s: expected a number"),
        (
            {"limits": {"max_endpoints_per_tenant": 0}},
            "limits.max_endpoints_per_tenant: expected null or an integer >= 1",
        ),
        (
            {"limits": {"max_endpoints_per_tenant": "5"}},
            "limits.max_endpoints_per_tenant: expected null or an integer >= 1",
        ),
        ({"retention": {"days": 0}}, "retention.days: expected a number > 0"),
        (
            {"log": {"level": "loud"}},
            "log.level: expected one of debug, info, warning, error, got 'loud'",
        ),
        ({"log": {"format": "xml"}}, "log.format: expected text or json"),
        ({"metrics": {"require_auth": 1}}, "metrics.require_auth: expected true or false"),
        ({"listen": "nohost"}, "listen: expected host:port or unix:/path"),
        ({"listen": "127.0.0.1:99999"}, "listen: expected host:port or unix:/path"),
        ({"listen": "unix:relative.sock"}, "listen: expected host:port or unix:/path"),
        ({"listen": 8080}, "listen: expected host:port or unix:/path"),
        ({"database": ""}, "database: expected a file path"),
        ({"delivery": 5}, "delivery: expected a mapping"),
        ({"log": ["info"]}, "log: expected a mapping"),
        ({"api_keys": "secret"}, "api_keys: expected a list"),
        ({"event_types": "call.completed"}, "event_types: expected a list"),
        ({"event_types": ["bad name"]}, "event_types[0].name: expected dot-separated segments"),
        ({"event_types": ["call..x"]}, "event_types[0].name: expected dot-separated segments"),
        ({"event_types": [5]}, "event_types[0]: expected a mapping"),
    ],
)
def test_bad_values_name_the_key_and_the_expectation(data: dict[str, Any], line: str) -> None:
    problems = problems_of(data)
    assert any(p.startswith(line) for p in problems), problems


@pytest.mark.parametrize(("value", "shown"), [(31, "got 31"), ("x", "got 'x'"), (True, "got True")])
def test_bad_values_show_what_was_given(value: Any, shown: str) -> None:
    (problem,) = problems_of({"delivery": {"timeout_s": value}})
    assert problem.startswith("delivery.timeout_s: expected a number > 0 and <= 30")
    assert problem.endswith(shown)


def test_a_bad_cidr_is_quoted() -> None:
    (problem,) = problems_of({"security": {"allow_networks": ["10.0.0.0/8", "not-a-cidr"]}})
    assert "not-a-cidr" in problem


def test_a_long_bad_value_is_shortened() -> None:
    (problem,) = problems_of({"log": {"level": "x" * 500}})
    assert len(problem) < 200


def test_the_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert problems_of(["listen"])[0].startswith("(top level): expected a mapping")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), {})
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "just text\n"), {})


# --- api keys --------------------------------------------------------------------------


def test_api_key_inline_and_from_the_environment() -> None:
    c = config_from_mapping(
        {
            "api_keys": [
                {"name": "inline", "key": "i" * 32},
                {"name": "env", "key_env": "WEBHOOKD_API_KEY"},
            ]
        },
        ENV,
    )
    assert c.api_keys == (ApiKey("inline", "i" * 32), ApiKey("env", API_KEY))


def test_api_keys_are_not_in_the_repr() -> None:
    c = config_from_mapping({"api_keys": [{"name": "backend", "key_env": "WEBHOOKD_API_KEY"}]}, ENV)
    assert API_KEY not in repr(c)


def test_a_short_inline_key_is_refused_without_echoing_it() -> None:
    key = "short-but-secret-key-31-chars!!"
    assert len(key) == 31
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"api_keys": [{"name": "a", "key": key}]}, {})
    assert info.value.problems == ["api_keys[0].key: expected at least 32 characters, got 31"]
    assert key not in str(info.value)
    assert key not in repr(info.value)


def test_a_short_key_from_the_environment_is_refused_without_echoing_it() -> None:
    key = "tiny-secret-value"
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"api_keys": [{"name": "a", "key_env": "MY_KEY"}]}, {"MY_KEY": key})
    (problem,) = info.value.problems
    assert problem.startswith("api_keys[0].key_env (MY_KEY): expected at least 32 characters")
    assert key not in str(info.value)


def test_an_unset_key_env_names_the_variable() -> None:
    problems = problems_of({"api_keys": [{"name": "a", "key_env": "WEBHOOKD_MISSING_KEY"}]}, {})
    assert problems == ["api_keys[0].key_env: environment variable WEBHOOKD_MISSING_KEY is not set"]


def test_key_and_key_env_together_are_refused() -> None:
    problems = problems_of(
        {"api_keys": [{"name": "a", "key": "k" * 40, "key_env": "WEBHOOKD_API_KEY"}]}
    )
    assert problems == ["api_keys[0]: give one of key, key_env or key_file"]
    assert "k" * 40 not in problems[0]


def test_a_key_needs_key_or_key_env() -> None:
    assert problems_of({"api_keys": [{"name": "a"}]}) == [
        "api_keys[0]: expected key, key_env or key_file"
    ]


def test_a_key_needs_a_unique_name() -> None:
    assert any(
        p.startswith("api_keys[0].name") for p in problems_of({"api_keys": [{"key": "k" * 32}]})
    )
    problems = problems_of(
        {"api_keys": [{"name": "a", "key": "k" * 32}, {"name": "a", "key": "j" * 32}]}
    )
    assert problems == ["api_keys[1].name: duplicate key name 'a'"]


def test_tenant_scoping_is_parsed() -> None:
    c = config_from_mapping(
        {
            "api_keys": [
                {"name": "admin", "key": "a" * 32, "tenant": None},
                {"name": "acme", "key": "b" * 32, "tenant": "acme"},
                {"name": "globex", "key_env": "WEBHOOKD_API_KEY", "tenant": "org:globex@eu-1"},
            ]
        },
        ENV,
    )
    assert [(k.name, k.tenant) for k in c.api_keys] == [
        ("admin", None),
        ("acme", "acme"),
        ("globex", "org:globex@eu-1"),
    ]


@pytest.mark.parametrize("tenant", ["", "has space", "x" * 129, 5, ["a"]])
def test_a_bad_tenant_is_refused(tenant: Any) -> None:
    problems = problems_of({"api_keys": [{"name": "a", "key": "k" * 32, "tenant": tenant}]})
    assert any(p.startswith("api_keys[0].tenant: expected null or a tenant name") for p in problems)


# --- listen and authentication ---------------------------------------------------------


def test_no_keys_on_a_public_address_is_refused() -> None:
    (problem,) = problems_of({"listen": "0.0.0.0:8080"}, {})
    assert problem.startswith("listen: 0.0.0.0:8080 is not a loopback address")
    assert "api_keys" in problem
    assert "loopback or a unix socket" in problem


@pytest.mark.parametrize("listen", ["192.0.2.10:8080", "[::]:8080", "example.com:80"])
def test_no_keys_on_other_non_loopback_addresses_is_refused(listen: str) -> None:
    (problem,) = problems_of({"listen": listen}, {})
    assert problem.startswith(f"listen: {listen} is not a loopback address")


def test_a_public_address_with_keys_is_fine() -> None:
    c = config_from_mapping(
        {"listen": "0.0.0.0:8080", "api_keys": [{"name": "a", "key_env": "WEBHOOKD_API_KEY"}]},
        ENV,
    )
    assert c.listen_address.host == "0.0.0.0"
    assert not c.listen_address.is_loopback


@pytest.mark.parametrize(
    "listen",
    [
        "unix:/run/webhookd/api.sock",
        "127.0.0.1:8080",
        "127.1.2.3:0",
        "localhost:9000",
        "[::1]:8080",
    ],
)
def test_loopback_and_unix_sockets_need_no_keys(listen: str) -> None:
    assert config_from_mapping({"listen": listen}, {}).listen_address.is_loopback


def test_parse_listen_forms() -> None:
    assert parse_listen("unix:/run/x.sock").unix_path == "/run/x.sock"
    v6 = parse_listen("[::1]:8443")
    assert (v6.host, v6.port) == ("::1", 8443)
    v4 = parse_listen("10.0.0.1:1")
    assert (v4.host, v4.port) == ("10.0.0.1", 1)
    for bad in ["nohost", ":8080", "host:", "host:http", "unix:run.sock", "h:65536"]:
        with pytest.raises(ValueError):
            parse_listen(bad)


# --- files -----------------------------------------------------------------------------


def test_invalid_yaml_gives_a_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:8080\ndelivery:\n  workers: 64\n   timeout_s: 30\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: not valid YAML at line 4")


def test_an_unclosed_list_gives_a_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "delivery:\n  retry_schedule_s: [5, 300\n  jitter: 0\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path, {})


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    (problem,) = info.value.problems
    assert problem == f"{path}: cannot read the config file: No such file or directory"


def test_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path, {})


def test_a_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("database: /tmp/caf\u00e9.db\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, {})


def test_load_config_takes_its_environment_from_the_argument(tmp_path: Path) -> None:
    path = write(tmp_path, "api_keys:\n  - name: a\n    key_env: ONLY_IN_ARGUMENT\n")
    c = load_config(path, {"ONLY_IN_ARGUMENT": "z" * 32})
    assert c.api_keys[0].key == "z" * 32
    with pytest.raises(ConfigError, match="ONLY_IN_ARGUMENT is not set"):
        load_config(path, {})


# --- known bugs ------------------------------------------------------------------------


def test_an_enormous_integer_is_a_config_error() -> None:
    problems_of({"delivery": {"timeout_s": 10**400}})


def test_a_gigantic_integer_is_a_config_error() -> None:
    problems_of({"delivery": {"workers": 10**5000}})


def test_a_gigantic_integer_in_a_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "delivery:\n  workers: " + "9" * 5000 + "\n"), {})


def test_a_numeric_inline_key_is_not_echoed() -> None:
    key = 1234567890123456789012345678901234567890
    problems = problems_of({"api_keys": [{"name": "a", "key": key}]})
    assert not any(str(key) in p for p in problems)


@pytest.mark.parametrize("where", ["event_type", "tenant"])
def test_a_trailing_newline_is_not_a_valid_name(where: str) -> None:
    if where == "event_type":
        problems_of({"event_types": ["call.completed\n"]})
    else:
        problems_of({"api_keys": [{"name": "a", "key": "k" * 32, "tenant": "acme\n"}]})


# --- any input: ConfigError or a Config, nothing else ----------------------------------

SECTION_KEYS = {
    "delivery": [f.name for f in dataclasses.fields(DeliveryConfig)],
    "security": ["https_only", "allow_networks"],
    "limits": [f.name for f in dataclasses.fields(LimitsConfig)],
    "retention": ["days", "payload_days"],
    "log": ["level", "format"],
    "metrics": ["require_auth"],
}
HYPO_ENV = {"GOOD": "g" * 40, "SHORT": "s", "EMPTY": ""}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=12)
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
yaml_keys = st.text(max_size=10) | st.integers() | st.none() | st.booleans()


def section_strategy(name: str) -> st.SearchStrategy[Any]:
    return json_like | st.dictionaries(
        st.sampled_from(SECTION_KEYS[name]) | st.text(max_size=8),
        json_like | st.sampled_from([0, 1, 30, 0.5, [1, 2], ["127.0.0.0/8"], "info", "json"]),
        max_size=6,
    )


api_key_item = st.dictionaries(
    st.sampled_from(["name", "key", "key_env", "tenant"]) | st.text(max_size=5),
    json_like | st.sampled_from(["GOOD", "SHORT", "EMPTY", "MISSING", "k" * 32, "acme"]),
    max_size=5,
)
top_level = st.fixed_dictionaries(
    {},
    optional={
        "listen": json_like
        | st.sampled_from(["0.0.0.0:80", "unix:/x", "[::1]:1", "a:b:c", "[::1]", "unix:"]),
        "database": json_like,
        "api_keys": json_like | st.lists(api_key_item | json_like, max_size=3),
        "event_types": json_like | st.lists(json_like | st.sampled_from(["a.b", "a..b"])),
        **{name: section_strategy(name) for name in SECTION_KEYS},
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(known=top_level, extra=st.dictionaries(yaml_keys, json_like, max_size=3))
def test_any_document_gives_a_config_or_a_config_error(
    known: dict[Any, Any], extra: dict[Any, Any]
) -> None:
    data = {**extra, **known}
    try:
        c = config_from_mapping(data, HYPO_ENV)
    except ConfigError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and ": " in p for p in exc.problems)
        assert "g" * 40 not in str(exc)
    else:
        assert isinstance(c, Config)


@given(json_like)
def test_any_top_level_value_gives_a_config_or_a_config_error(data: Any) -> None:
    with contextlib.suppress(ConfigError):
        config_from_mapping(data, HYPO_ENV)


def test_key_file_reads_the_key_and_expands_variables(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("f" * 40 + "\n")
    cfg = config_from_mapping(
        {"api_keys": [{"name": "a", "key_file": "${CREDENTIALS_DIRECTORY}/api-key"}]},
        {"CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    assert cfg.api_keys[0].key == "f" * 40
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"api_keys": [{"name": "a", "key_file": str(tmp_path / "nope")}]}, {})
    assert "api_keys[0].key_file" in err.value.problems[0]
    (tmp_path / "short").write_text("tiny-key")
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"api_keys": [{"name": "a", "key_file": str(tmp_path / "short")}]}, {})
    assert "at least 32" in err.value.problems[0] and "tiny-key" not in err.value.problems[0]
    with pytest.raises(ConfigError):
        config_from_mapping(
            {"api_keys": [{"name": "a", "key": "k" * 40, "key_file": str(tmp_path / "api-key")}]},
            {},
        )
