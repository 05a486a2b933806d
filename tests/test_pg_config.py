"""The database settings for PostgreSQL: `database_env`, and a DSN's password kept out of
what is shown."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from webhookd.config import ConfigError, config_from_mapping, redact_dsn


def test_database_env_reads_the_dsn_from_the_environment() -> None:
    dsn = "postgresql://webhookd:pw@db.internal/webhookd"
    c = config_from_mapping({"database_env": "WEBHOOKD_DATABASE"}, {"WEBHOOKD_DATABASE": dsn})
    assert c.database == dsn
    assert "pw" not in c.database_shown


@pytest.mark.parametrize(
    ("doc", "env", "problem"),
    [
        ({"database_env": "NOPE"}, {}, "database_env: environment variable NOPE is not set"),
        ({"database_env": "E"}, {"E": ""}, "database_env: environment variable E is not set"),
        (
            {"database_env": "E", "database": "x.db"},
            {"E": "postgresql:///d"},
            "database_env: give one of database or database_env",
        ),
        ({"database_env": 3}, {}, "database_env: expected an environment variable name"),
    ],
)
def test_database_env_problems_name_the_key(
    doc: dict[str, object], env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(doc, env)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_a_bad_database_value_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"database": ["postgresql://u:secret@h/d"]}, {})
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://u:s3cret@h:5432/db?sslmode=require",
            "postgresql://u:***@h:5432/db?sslmode=require",
        ),
        (
            "postgresql://u@h/db?password=s3cret&sslmode=a",
            "postgresql://u@h/db?password=***&sslmode=a",
        ),
        ("host=h user=u password='a b\\'c' dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h PassWord = s3cret dbname=d", "host=h PassWord = *** dbname=d"),
        ("./webhookd.db", "./webhookd.db"),
        ("postgresql:///db?host=/run/postgresql", "postgresql:///db?host=/run/postgresql"),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_check_config_does_not_print_the_password(tmp_path: Any) -> None:
    cfg = tmp_path / "webhookd.yaml"
    cfg.write_text("database: postgresql://webhookd:s3cret-pw@db.internal/webhookd\n")
    done = subprocess.run(
        [sys.executable, "-m", "webhookd", "check-config", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "db.internal" in done.stdout
    assert "s3cret-pw" not in done.stdout + done.stderr
