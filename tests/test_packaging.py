"""The distribution: the wheel holds every module and data file, its metadata passes `twine
check`, and the README's Colab install line keeps a preinstalled (CUDA) torch as it is."""
import base64
import hashlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
STUB_TORCH = "2.9.0+cu126"  # a Colab-like CUDA build, as a local version


def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def package_dirs():
    """{package: source folder} from [tool.setuptools]'s packages and package-dir."""
    setup = project()["tool"]["setuptools"]
    dirs = setup["package-dir"]

    def folder(pkg: str) -> Path:  # a subpackage lies inside its parent's folder, as setuptools has it
        if pkg in dirs:
            return ROOT / dirs[pkg]
        parent, _, name = pkg.rpartition(".")
        return folder(parent) / name

    return {pkg: folder(pkg) for pkg in setup["packages"]}


def run(cmd, **kw):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def dist(tmp_path_factory):
    """sdist and wheel built with `python -m build` from a copy of the sources (the checkout's
    own build/ and egg-info stay untouched); the wheel is built from the sdist."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in sorted({p.relative_to(ROOT).parts[0] for p in package_dirs().values()}):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    # Without setuptools here (a Python 3.12+ venv has none), build makes its isolated env.
    isolation = ["--no-isolation"] if importlib.util.find_spec("setuptools") else []
    run([sys.executable, "-m", "build", *isolation, "--outdir", tmp / "out", src])
    wheel, = (tmp / "out").glob("highlightsense-*.whl")
    sdist, = (tmp / "out").glob("highlightsense-*.tar.gz")
    return wheel, sdist


def test_wheel_contents(dist):
    wheel, _ = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    dirs = package_dirs()
    mapped = set(dirs.values())
    expected = set()
    for pkg, folder in dirs.items():
        prefix = pkg.replace(".", "/")
        for path in folder.iterdir():
            if path.is_file() and path.suffix != ".pyc" and path.suffix != ".sh":
                # .py modules and data; shell scripts are tools run from a checkout
                expected.add(f"{prefix}/{path.name}")
        for sub in folder.rglob("*.py"):  # a folder of modules that no package maps is lost
            if "__pycache__" not in sub.parts:
                assert sub.parent in mapped, f"{sub.parent.relative_to(ROOT)} is in no package"
    assert "highlightsense/configs/default.yaml" in expected
    # The review page: package data in a folder (the loop above sees package folders only).
    page = ROOT / "operators" / "sinks" / "review_page"
    expected |= {f"highlightsense/operators/sinks/review_page/{p.name}" for p in page.iterdir()}
    assert "highlightsense/engine/cli.py" in expected
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    meta = zipfile.ZipFile(wheel).read(f"highlightsense-{project()['project']['version']}"
                                       ".dist-info/METADATA").decode()
    assert "Description-Content-Type: text/markdown" in meta
    assert "## On Google Colab" in meta  # the README is the long description


def test_twine_check(dist):
    run([sys.executable, "-m", "twine", "check", "--strict", *dist])


def colab_cell():
    """The indented code block of the README's `## On Google Colab` section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## On Google Colab\n", 1)[1].split("\n## ", 1)[0]
    return [line[4:] for line in section.splitlines() if line.startswith("    ")]


def stub_wheel(folder: Path) -> Path:
    """torch-2.9.0+cu126 as a minimal wheel: dist-info and an empty torch package."""
    dist_info = f"torch-{STUB_TORCH}.dist-info"
    files = {
        "torch/__init__.py": f'__version__ = "{STUB_TORCH}"\n',
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {STUB_TORCH}\n",
        f"{dist_info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: test_packaging\n"
                               "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"torch-{STUB_TORCH}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_colab_install_keeps_preinstalled_torch(dist, tmp_path):
    wheel, _ = dist
    cell = colab_cell()
    installs = [line for line in cell if re.match(r"#?\s*!pip install ", line)]
    assert installs, "no `!pip install` line in the Colab cell"
    for line in installs:  # the line and its alternatives leave torch to pip
        assert "torch" not in line, line
        assert not re.search(r"\s(-U|--upgrade|--force-reinstall|--ignore-installed|-I)\b", line), line
    line, = [line for line in installs if line.startswith("!")]
    args = shlex.split(line[1:])
    assert args[:2] == ["pip", "install"] and "{REPO}" in args[-1], line

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    pip = [sys.executable, "-m", "pip", "--python", python]
    run([*pip, "install", "-q", "--no-index", "--no-deps", stub_wheel(tmp_path)])

    report = tmp_path / "report.json"
    # The README's own flags, the local wheel for the repository: resolution only.
    run([*pip, *args[1:-1], "--dry-run", "--report", report, wheel])
    install = {item["metadata"]["name"].lower(): item for item in json.loads(report.read_text())["install"]}
    assert "highlightsense" in install, sorted(install)
    assert install["highlightsense"]["metadata"]["version"] == project()["project"]["version"]
    assert "torch" not in install, install.get("torch", {}).get("metadata", {}).get("version")
    assert not [name for name in install if name.startswith(("nvidia-", "triton"))], sorted(install)

    version = run([python, "-c", "import importlib.metadata as m, torch; "
                   "print(m.version('torch'), torch.__version__)"]).stdout.split()
    assert version == [STUB_TORCH, STUB_TORCH]
