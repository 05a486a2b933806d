"""`webhookd check-config` and `webhookd serve` with a bad config, as real processes, and
the shipped example config etc/webhookd.yaml."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhookd.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "webhookd.yaml"
EXIT_CONFIG = 78
API_KEY = "0123456789abcdef" * 3  # 48 characters


def run(
    *args: str, cwd: Path, env_extra: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOKD_API_KEY"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "webhookd", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write(tmp_path: Path, text: str, name: str = "webhookd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
listen: 127.0.0.1:8080
database: {db}
event_types:
  - name: call.completed
delivery:
  timeout_s: 10
  retry_schedule_s: [1, 2.5]
"""


# --- check-config ----------------------------------------------------------------------


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.format(db=tmp_path / "w.db"))
    result = run("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert result.stderr == ""
    assert not (tmp_path / "w.db").exists()


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    path = write(tmp_path, "delivery:\n  timeout_s: 45\n  timout_s: 5\n")
    result = run("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert "OK" not in result.stdout
    assert "delivery.timeout_s: expected a number > 0 and <= 30, got 45" in result.stderr
    assert "delivery.timout_s: unknown key (did you mean delivery.timeout_s?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_reports_invalid_yaml_with_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "log:\n  level: info\n   format: json\n")
    result = run("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert "line 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert str(path) in result.stderr
    assert "cannot read" in result.stderr


def test_check_config_reads_key_env_from_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path, "listen: 0.0.0.0:8080\napi_keys:\n  - name: a\n    key_env: WEBHOOKD_API_KEY\n"
    )
    missing = run("check-config", "-c", str(path), cwd=tmp_path)
    assert missing.returncode == EXIT_CONFIG
    assert "WEBHOOKD_API_KEY is not set" in missing.stderr
    short = run("check-config", "-c", str(path), cwd=tmp_path, env_extra={"WEBHOOKD_API_KEY": "x"})
    assert short.returncode == EXIT_CONFIG
    assert "at least 32 characters" in short.stderr
    ok = run("check-config", "-c", str(path), cwd=tmp_path, env_extra={"WEBHOOKD_API_KEY": API_KEY})
    assert ok.returncode == 0, ok.stderr
    assert API_KEY not in ok.stdout + ok.stderr


def test_check_config_refuses_a_public_listen_without_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: 0.0.0.0:8080\n")
    result = run("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert "listen:" in result.stderr
    assert "api_keys" in result.stderr


# --- serve with a bad config -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("delivery:\n  workers: 0\n", "delivery.workers"),
        ("metrics:\n  require_auth: true\n  extra: 1\n", "metrics.extra: unknown key"),
        (
            "delivery:\n  timout_s: 5\n",
            "delivery.timout_s: unknown key (did you mean delivery.timeout_s?)",
        ),
        ("listen: 0.0.0.0:{port}\n", "api_keys"),
    ],
)
def test_serve_with_a_bad_config_exits_78_without_starting(
    tmp_path: Path, text: str, named: str
) -> None:
    db = tmp_path / "never-created.db"
    path = write(tmp_path, f"database: {db}\n" + text.format(port=0))
    result = run("serve", "-c", str(path), cwd=tmp_path, timeout=30)
    assert result.returncode == EXIT_CONFIG
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()
    assert not (tmp_path / "webhookd.db").exists()
    assert "startup" not in result.stdout + result.stderr


def test_serve_with_a_missing_config_exits_78(tmp_path: Path) -> None:
    result = run("serve", "-c", str(tmp_path / "absent.yaml"), cwd=tmp_path, timeout=30)
    assert result.returncode == EXIT_CONFIG
    assert "absent.yaml" in result.stderr
    assert not (tmp_path / "webhookd.db").exists()


# --- the shipped example ---------------------------------------------------------------


def test_the_shipped_example_passes_check_config(tmp_path: Path) -> None:
    result = run(
        "check-config",
        "-c",
        str(EXAMPLE),
        cwd=tmp_path,
        env_extra={"WEBHOOKD_API_KEY": API_KEY},
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_the_shipped_example_needs_its_key_variable(tmp_path: Path) -> None:
    result = run("check-config", "-c", str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert "WEBHOOKD_API_KEY" in result.stderr


def test_the_shipped_example_shows_the_defaults() -> None:
    config = load_config(EXAMPLE, {"WEBHOOKD_API_KEY": API_KEY})
    assert dataclasses.replace(config, api_keys=(), event_types=()) == Config()
    assert [(k.name, k.tenant) for k in config.api_keys] == [("backend", None)]


def nested_dataclass(hint: Any) -> type | None:
    """The dataclass a field holds directly or as `tuple[X, ...]`, if any."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def yaml_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value)
    if isinstance(value, list):
        return {k for item in value if isinstance(item, dict) for k in item}
    return set()


def test_the_shipped_example_has_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    hints = typing.get_type_hints(Config)
    missing = []
    for f in dataclasses.fields(Config):
        if f.name not in data:
            missing.append(f.name)
            continue
        inner = nested_dataclass(hints[f.name])
        if inner is None:
            continue
        present = yaml_keys(data[f.name])
        for sub in dataclasses.fields(inner):
            # An api key's `key` is shown as the commented alternative to key_env.
            documented = sub.name in present or (
                f.name == "api_keys" and sub.name == "key" and "`key:" in text
            )
            if not documented:
                missing.append(f"{f.name}.{sub.name}")
    assert missing == []


def commented_keys(node: yaml.Node, depth: int) -> list[tuple[str, int]]:
    """(key, line) of every mapping key down to `depth` levels of mappings."""
    out: list[tuple[str, int]] = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out.append((key.value, key.start_mark.line))
            if depth > 1:
                out.extend(commented_keys(value, depth - 1))
    return out


def test_every_key_of_the_shipped_example_has_a_comment() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    root = yaml.compose(text)
    assert root is not None
    api_keys = next(v for k, v in root.value if k.value == "api_keys")
    keys = commented_keys(root, 2) + commented_keys(api_keys.value[0], 1)
    assert len(keys) > 25
    uncommented = [
        name
        for name, line in keys
        if not (lines[line - 1].strip().startswith("#") or " # " in lines[line])
    ]
    assert uncommented == []
