"""Settings come from the environment and a bad value names its variable."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from service.settings import (
    KNOWN_VARIABLES,
    Settings,
    SettingsError,
    apply_flags,
    load_settings,
    markdown_table,
)


def test_defaults_without_environment():
    settings = load_settings({})
    assert settings.database_url is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.data_dir == Path(".jobq")
    assert settings.stall_timeout == timedelta(seconds=30)
    assert settings.worker_queues == ()


def test_values_are_read_from_prefixed_variables():
    settings = load_settings({
        "DATABASE_URL": "postgresql://u@h/db",
        "JOBQ_PORT": "9000",
        "JOBQ_WORKER_QUEUES": "a, b,,c",
        "JOBQ_SHUTDOWN_GRACE_SECONDS": "2.5",
    })
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.port == 9000
    assert settings.worker_queues == ("a", "b", "c")
    assert settings.shutdown_grace == timedelta(seconds=2.5)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"JOBQ_PORT": "eighty"}, "JOBQ_PORT"),
        ({"JOBQ_WORKER_CONCURRENCY": "0"}, "JOBQ_WORKER_CONCURRENCY"),
        ({"JOBQ_STALL_TIMEOUT_SECONDS": "-1"}, "JOBQ_STALL_TIMEOUT_SECONDS"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ],
)
def test_bad_value_names_its_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        load_settings(env)


def test_unknown_jobq_variables_are_kept_for_a_warning():
    assert load_settings({"JOBQ_PROT": "1"}).extra == {"JOBQ_PROT": "1"}


def test_the_readme_holds_exactly_the_generated_table_of_variables():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = markdown_table()
    assert table in readme, "README is stale: paste `python -m service.settings --markdown`"
    # No stale row left over beside it: each variable is named in one row of the README.
    for name in KNOWN_VARIABLES:
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}`")]
        assert len(rows) == 1, (name, rows)


def test_every_setting_is_read_from_its_variable():
    # Each declared variable changes its field: none is declared but never read.
    changed = load_settings({
        "DATABASE_URL": "postgresql://u@h/db", "JOBQ_DATA_DIR": "/d", "JOBQ_HOST": "0.0.0.0",
        "JOBQ_PORT": "1", "JOBQ_POOL_SIZE": "7", "JOBQ_WORKER_CONCURRENCY": "3",
        "JOBQ_WORKER_QUEUES": "a", "JOBQ_HEARTBEAT_SECONDS": "2",
        "JOBQ_STALL_TIMEOUT_SECONDS": "9", "JOBQ_SHUTDOWN_GRACE_SECONDS": "4",
        "JOBQ_POLL_SECONDS": "3", "JOBQ_PROGRESS_INTERVAL_SECONDS": "1",
        "JOBQ_RETENTION_INTERVAL_SECONDS": "7",
        "JOBQ_MAX_BODY_BYTES": "5", "JOBQ_MAX_UPLOAD_BYTES": "6",
        "JOBQ_CONVERSION_PROCESSES": "1", "JOBQ_CONVERSION_MEMORY_MB": "300",
        "JOBQ_APP": "my.jobs",
        "JOBQ_STREAM_HEARTBEAT_SECONDS": "2", "JOBQ_WEBHOOK_SECRETS": "new,old",
        "JOBQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32", "JOBQ_WEBHOOK_TIMEOUT_SECONDS": "3",
        "JOBQ_ALLOWED_HOSTS": "jobq.example.com", "JOBQ_CORS_ORIGINS": "https://app.example",
        "JOBQ_AUTH": "off-any-address",
    })
    default = Settings()
    assert changed.extra == {}
    same = [f.name for f in dataclasses.fields(Settings)
            if f.name != "extra" and getattr(changed, f.name) == getattr(default, f.name)]
    assert same == []


def test_the_pool_size_default_is_the_one_documented():
    # The docstring once said 10 while the value was 20: now both come from one declaration.
    assert f"| `JOBQ_POOL_SIZE` | `{Settings().pool_size}` |" in markdown_table()


def test_markdown_generator_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "service.settings", "--markdown"],
                         capture_output=True, text=True, check=True).stdout
    assert out == markdown_table()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOBQ_HEARTBEAT_SECONDS": "15"},
         "JOBQ_STALL_TIMEOUT_SECONDS (30) must be more than 2 x JOBQ_HEARTBEAT_SECONDS (15)"),
        ({"JOBQ_STALL_TIMEOUT_SECONDS": "1", "JOBQ_HEARTBEAT_SECONDS": "0.5"},
         "must be more than 2 x"),
        ({"JOBQ_POOL_SIZE": "3"}, "JOBQ_POOL_SIZE (3) must be at least 4"),
    ],
)
def test_settings_that_disagree_stop_with_one_line(env, message):
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        load_settings(env)
    assert "\n" not in str(caught.value)


def test_settings_built_in_code_are_checked_too():
    with pytest.raises(SettingsError, match="JOBQ_WORKER_CONCURRENCY"):
        Settings(worker_concurrency=0)


def test_flags_override_variables_and_are_checked_like_them():
    settings = apply_flags(load_settings({"JOBQ_PORT": "9000"}),
                           {"port": "9100", "queues": "a,b", "concurrency": None})
    assert (settings.port, settings.worker_queues) == (9100, ("a", "b"))
    with pytest.raises(SettingsError, match=r"JOBQ_WORKER_CONCURRENCY \(--concurrency\)"):
        apply_flags(settings, {"concurrency": "0"})
    with pytest.raises(SettingsError, match=r"JOBQ_PORT \(--port\) must be a whole number"):
        apply_flags(settings, {"port": "eighty"})


def test_auth_off_is_refused_on_an_address_other_hosts_can_reach():
    with pytest.raises(SettingsError, match="JOBQ_AUTH=off-any-address"):
        load_settings({"JOBQ_AUTH": "off", "JOBQ_HOST": "0.0.0.0"})
    with pytest.raises(SettingsError, match="must be one of on, off, off-any-address"):
        load_settings({"JOBQ_AUTH": "maybe"})
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        assert not load_settings({"JOBQ_AUTH": "off", "JOBQ_HOST": host}).auth_required()
    assert not load_settings({"JOBQ_AUTH": "off-any-address",
                              "JOBQ_HOST": "0.0.0.0"}).auth_required()
    # Unset: on for `serve`; the command may pass its own default (`up` on loopback: off).
    assert load_settings({"JOBQ_HOST": "0.0.0.0"}).auth_required()
    assert not load_settings({}).auth_required(default="off")
