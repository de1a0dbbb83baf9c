"""What a worker's forkserver preloads: the modules its main module comes from, so that a child
does not import jobq again when multiprocessing runs the parent's main module in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PRINT = """
def _show():
    from workers.app import main_sources, preload
    print(main_sources())
    print(preload())
_show()
"""


def _run(args: list[str], cwd: Path) -> list[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=True).stdout.splitlines()


def test_a_module_run_with_dash_m_is_its_own_source(tmp_path):
    (tmp_path / "entry_module.py").write_text(PRINT)
    sources, preloaded = _run(["-m", "entry_module"], tmp_path)
    assert sources == "['entry_module']"
    assert "'entry_module'" in preloaded and "'workers.tasks.mesh'" in preloaded


def test_a_script_names_the_modules_it_imported_from(tmp_path):
    # The shape of the `jobq` console script: `from service.cli import main`.
    script = tmp_path / "jobq-like"
    script.write_text("import sys\nfrom service.cli import main\n" + PRINT)
    sources, preloaded = _run([str(script)], tmp_path)
    assert sources == "['sys', 'service.cli']"  # `_show` is the script's own: not a source
    assert "'service.cli'" in preloaded and "'trimesh'" in preloaded
