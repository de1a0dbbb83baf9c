"""The import rules of pyproject.toml ([tool.importlinter]) hold: checked on every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    # service never imports workers (but for the CLI), the API never reaches trimesh, the
    # domain imports no database code; each checked through every chain of our own modules.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_api_app_loads_without_trimesh_even_through_other_packages():
    # import-linter follows our modules only; this catches a path through a third party too.
    code = ("import sys; import service.api.app, service.jobs, service.conversions; "
            "print('trimesh' in sys.modules, 'workers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "False"]
