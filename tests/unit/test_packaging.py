"""pyproject.toml lists its packages (the migrations are mapped into service.db.migrations), so
a package added to the tree must be added to the list too, or a wheel would leave it out."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_in_the_tree_is_listed_for_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {".".join(init.parent.relative_to(ROOT).parts)
               for top in ("service", "workers", "jobq")
               for init in (ROOT / top).rglob("__init__.py")}
    listed = set(setuptools["packages"])
    assert in_tree <= listed, sorted(in_tree - listed)
    assert setuptools["package-dir"] == {"service.db.migrations": "migrations"}
    assert {"service.db.migrations", "service.db.migrations.versions"} <= listed
    for package in listed - {"service.db.migrations", "service.db.migrations.versions"}:
        assert (ROOT / package.replace(".", "/") / "__init__.py").is_file(), package
