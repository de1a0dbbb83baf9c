"""Settings come from the environment and a bad value names its variable."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from service.settings import SettingsError, load_settings


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
