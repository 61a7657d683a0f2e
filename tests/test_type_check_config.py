"""The type checker's configuration ([tool.mypy] in pyproject.toml): strict on ``taptouch_resource``,
mypy's default checks and the bodies of unannotated functions on the other packages. Checked on two
probe packages of the same names, with the same four functions, under the project's pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """def untyped(x):
    return x


def bare(items: list) -> int:
    return len(items)


def wrong() -> int:
    return "text"


def unannotated_body():
    return len(5)
"""


def test_mypy_is_strict_on_the_client_only(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in ("taptouch_resource", "pipelines"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "probe.py").write_text(PROBE)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / ".mypy_cache"), "taptouch_resource", "pipelines"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = {
        (line.split(":")[0], line.rsplit("[", 1)[1].rstrip("]"))
        for line in done.stdout.splitlines()
        if ": error:" in line
    }
    assert errors == {
        ("taptouch_resource/probe.py", "no-untyped-def"),  # strict: every function annotated
        ("taptouch_resource/probe.py", "type-arg"),  # strict: no bare generic
        ("taptouch_resource/probe.py", "return-value"),
        ("taptouch_resource/probe.py", "arg-type"),
        ("pipelines/probe.py", "return-value"),  # basic: what is annotated is checked...
        ("pipelines/probe.py", "arg-type"),  # ...and the bodies of unannotated functions (check_untyped_defs)
    }, done.stdout
