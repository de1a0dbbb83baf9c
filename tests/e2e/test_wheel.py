"""A wheel of jobq, installed into a fresh virtualenv away from the checkout, migrates a new
database to this code's head: the migrations travel in the wheel (service.db.migrations), and
nothing reads the checkout's pyproject.toml or migrations/ directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from service.db import admin, migrate
from tests.conftest import new_database

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "service", "workers", "jobq", "migrations")


def run(command: list[str], cwd: Path, timeout: float, **env: str) -> str:
    # Nothing that points back into the checkout: no PYTHONPATH, no DATABASE_URL from outside.
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "DATABASE_URL", "TEST_DATABASE_URL",
                                "VIRTUAL_ENV")}
    result = subprocess.run(command, cwd=cwd, env={**environment, **env}, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


@pytest.fixture
async def empty_database(server_url: str) -> AsyncIterator[str]:
    url = await new_database(server_url, "jobq_wheel")
    yield url
    await admin.drop_database(server_url, admin.database_name(url))


async def test_an_installed_wheel_migrates_a_new_database_to_head(tmp_path, empty_database):
    # Built from a copy of what the image copies: setuptools writes build/ into the source
    # tree, and stale files there would go into later wheels of the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
         str(wheels), str(source)], cwd=tmp_path, timeout=300)
    [wheel] = wheels.glob("jobq-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
    # The dependencies come from pip's cache or index, as for anyone installing jobq.
    run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], cwd=tmp_path,
        timeout=900)

    out = run([str(venv / "bin" / "jobq"), "migrate"], cwd=tmp_path, timeout=300,
              DATABASE_URL=empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        revision = await conn.fetchval("SELECT version_num FROM alembic_version")
        tables = await conn.fetchval(
            "SELECT to_regclass('jobs') IS NOT NULL"
            " AND to_regclass('procrastinate_jobs') IS NOT NULL")
        functions = await conn.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'jobq\\_%'")
    finally:
        await conn.close()
    assert revision == migrate.head_revision(), (revision, out)
    assert tables, "jobq's and Procrastinate's tables are there"
    assert functions > 0, "and the jobq_* functions that change a job's state"

    # It was the wheel's code and scripts that ran, not the checkout's.
    where = run([str(venv / "bin" / "python"), "-c",
                 "import service.db.migrate as m; print(m.__file__); print(m.script_location())"],
                cwd=tmp_path, timeout=60).split()
    site = venv / "lib"
    assert all(Path(p).is_relative_to(site) for p in where), where
    assert (Path(where[1]) / "env.py").is_file()
    assert (Path(where[1]) / "versions").is_dir()
