"""Every `highlightsense.*` import resolves, for a reader's tools as for Python: jedi (the engine
behind most editors' goto) follows each one to the checkout's own file. The README's install
(`--config-settings editable_mode=strict`) makes that so: the package is a tree of links to the
checkout's files, which the top-level folders map onto through setuptools' package-dir."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

jedi = pytest.importorskip("jedi")

ROOT = Path(__file__).resolve().parent.parent
IMPORT = re.compile(r"^\s*(?:from\s+(highlightsense(?:\.\w+)*)\s+import"
                    r"|import\s+(highlightsense(?:\.\w+)*))", re.MULTILINE)


def imported_modules() -> set:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    found = set()
    for name in files:
        for m in IMPORT.finditer((ROOT / name).read_text(encoding="utf-8")):
            found.add(m.group(1) or m.group(2))
    return found


def test_jedi_follows_every_highlightsense_import_to_the_checkout(tmp_path):
    modules = imported_modules()
    assert len(modules) > 40  # the scan found the project's imports
    project = jedi.Project(tmp_path, environment_path=sys.prefix)
    unresolved = []
    for module in sorted(modules):
        code = f"import {module}\n"
        names = jedi.Script(code, path=tmp_path / "probe.py", project=project).goto(
            1, len(code) - 2, follow_imports=True)
        paths = [n.module_path for n in names if n.module_path]
        if not paths or not Path(paths[0]).resolve().is_relative_to(ROOT) or \
                "build" in Path(paths[0]).resolve().relative_to(ROOT).parts[:1]:
            unresolved.append(f"{module} -> {paths}")
    assert not unresolved, "\n".join(unresolved)
