"""`highlightsense detect` on a full disk and on a folder it cannot write, run as a user runs it.

Each run is the real command in a child process. When it cannot write its outputs it must stop
with exit status 1 and one line on stderr, `error: ...`, naming the folder and the reason; leave
no `highlights.json` (the mark of a complete run) and no half-written `.*.part` file; and leave
what was in the folder before it (a user's own file, an earlier complete run) as it was.

A full disk is a small tmpfs mounted for the test (root only) with a filler file leaving a few KB;
where mounting is not permitted the same checks run with a file-size limit on the child
(RLIMIT_FSIZE: its writes past the limit fail with EFBIG). A folder it cannot write is a
read-only tmpfs, or a path under a regular file.
"""
import errno
import os
import resource
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod

NOSPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
TOO_LARGE = os.strerror(errno.EFBIG)  # "File too large"
SUMMARY = "highlights.json"
OUTPUTS = ("raw_window_scores.csv", "final_clips_metadata.csv", "scores.png", SUMMARY)
RUN_TIMEOUT = 180


# -- small disks ----------------------------------------------------------------------------------

def _mount(args) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach it


_can_mount = None


def can_mount(tmp: Path) -> bool:
    """Whether this process may mount a tmpfs (root, and not forbidden by a container)."""
    global _can_mount
    if _can_mount is None:
        probe = tmp / f"mount-probe-{uuid.uuid4().hex}"
        probe.mkdir()
        _can_mount = os.geteuid() == 0 and _mount(
            ["-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)]).returncode == 0
        if _can_mount:
            _unmount(probe)
        probe.rmdir()
    return _can_mount


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size_kb, read_only=False) -> a fresh tmpfs under tmp_path; every one is
    unmounted at teardown, whatever the test did. Skips the test where mounting is not allowed."""
    mounted = []

    def mount(name: str, size_kb: int, read_only: bool = False) -> Path:
        if not can_mount(tmp_path):
            pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE variant runs")
        path = tmp_path / name
        path.mkdir()
        options = f"{'ro,' if read_only else ''}size={size_kb}k,mode=0755"
        result = _mount(["-t", "tmpfs", "-o", options, "tmpfs", str(path)])
        assert result.returncode == 0, result.stderr
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            _unmount(path)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(folder: Path, leave: int) -> Path:
    """A filler file that leaves `leave` bytes free on folder's file system (tmpfs: pages)."""
    filler = folder / "filler.bin"
    size = free_bytes(folder) - leave
    assert size > 0
    with open(filler, "wb") as f:
        f.write(b"\0" * size)
    assert free_bytes(folder) == leave
    return filler


def file_size_limit(limit: int):
    """preexec_fn: the child may write files up to `limit` bytes; a write past it fails with
    EFBIG instead of killing the child with SIGXFSZ."""
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_files


# -- running the command --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The child's environment: its own matplotlib config folder, filled before any run, so a
    size limit on a run never meets matplotlib building its font cache."""
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path_factory.mktemp("mplconfig")),
               MPLBACKEND="Agg")
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env,
                   check=True, timeout=RUN_TIMEOUT)
    return env


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A minute of synthetic stream (AAC in .m4a) with one loud moment."""
    v = SyntheticVod(60, seed=1, moments=[(20.0, 28.0)], music=[], bangs=[])
    return write_media(tmp_path_factory.mktemp("media") / "stream.m4a", v.blocks())


def detect(media, out, env, *extra, preexec_fn=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "highlightsense.engine.cli", "detect", str(media),
           "--out", str(out), "--no-clips", "-q", *map(str, extra)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT,
                          preexec_fn=preexec_fn, cwd=Path(media).parent)


def assert_one_line_error(proc, folder: Path, reason: str) -> str:
    """Exit status 1 and exactly one line on stderr: `error: ...` naming folder and reason."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (
        f"exit status {proc.returncode}, stderr:\n{proc.stderr}")
    line = lines[0]
    assert line.startswith("error: "), line
    assert str(folder) in line, f"the message does not name the folder {folder}: {line}"
    assert reason.lower() in line.lower(), f"the message does not say {reason!r}: {line}"
    return line


def snapshot(folder: Path) -> dict:
    """Every file under folder: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user_file(folder: Path) -> tuple:
    notes = folder / "notes.txt"
    notes.write_text("my notes about this stream\n")
    return notes, notes.stat().st_mtime_ns


def assert_folder_left_clean(folder: Path, notes: Path, notes_mtime: int):
    assert not (folder / SUMMARY).exists(), "a failed run left highlights.json"
    leftovers = [p.name for p in folder.rglob(".*.part")]
    assert not leftovers, f"half-written files left behind: {leftovers}"
    assert notes.read_text() == "my notes about this stream\n"
    assert notes.stat().st_mtime_ns == notes_mtime


# -- a full disk ----------------------------------------------------------------------------------

# Free space left on the tmpfs: none at all (the first write fails), and room for the small files
# but not for the plot (tens of KB), so the run gets as far as its outputs.
@pytest.mark.parametrize("free_kb", [0, 28])
def test_full_disk_stops_with_one_line(media, env, tmpfs, free_kb):
    out = tmpfs("out", 256)
    notes, mtime = user_file(out)
    filler = fill(out, free_kb * 1024)
    proc = detect(media, out, env)
    assert_one_line_error(proc, out, NOSPACE)
    assert_folder_left_clean(out, notes, mtime)
    assert filler.stat().st_size > 0


def test_file_size_limit_stops_with_one_line(media, env, tmp_path):
    """The same where no tmpfs can be mounted: writes past 16 KB fail (EFBIG), so the plot
    cannot be written while the small files can."""
    out = tmp_path / "out"
    out.mkdir()
    notes, mtime = user_file(out)
    proc = detect(media, out, env, preexec_fn=file_size_limit(16 * 1024))
    assert_one_line_error(proc, out, TOO_LARGE)
    assert_folder_left_clean(out, notes, mtime)


# -- a folder it cannot write ---------------------------------------------------------------------

def test_read_only_folder(media, env, tmpfs):
    ro = tmpfs("ro", 1024, read_only=True)
    for out in (ro, ro / "new"):  # the folder itself, and one to create in it
        proc = detect(media, out, env)
        assert_one_line_error(proc, out, os.strerror(errno.EROFS))
        assert not out.exists() or not any(out.iterdir())


def test_folder_under_a_regular_file(media, env, tmp_path):
    """Runs as any user (chmod does not stop root): a path whose parent is a file, and a path
    that is a file."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    proc = detect(media, afile / "out", env)
    assert_one_line_error(proc, afile / "out", os.strerror(errno.ENOTDIR))
    proc = detect(media, afile, env)
    assert_one_line_error(proc, afile, "")  # "File exists" or better: says so on one line
    assert afile.read_text() == "not a folder\n"


# -- a re-run that fails must not leave an earlier run looking complete ---------------------------

@pytest.mark.parametrize("limit", ["tmpfs", "rlimit"])
def test_failed_rerun_does_not_look_complete(media, env, tmpfs, tmp_path, limit):
    """A complete run, then a re-run with other settings that cannot write its outputs. After
    it the folder must not look complete while mixing the two runs: either highlights.json is
    gone, or every output is still exactly the first run's."""
    if limit == "tmpfs":
        out, preexec, reason = tmpfs("out", 512), None, NOSPACE
    else:
        out, preexec, reason = tmp_path / "out", file_size_limit(16 * 1024), TOO_LARGE
        out.mkdir()
    notes, mtime = user_file(out)
    first = detect(media, out, env, "--threshold-percentile", 99)
    assert first.returncode == 0, first.stderr
    assert (out / SUMMARY).exists()
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    if limit == "tmpfs":
        fill(out, 0)

    proc = detect(media, out, env, "--threshold-percentile", 50, preexec_fn=preexec)
    assert_one_line_error(proc, out, reason)
    leftovers = [p.name for p in out.rglob(".*.part")]
    assert not leftovers, f"half-written files left behind: {leftovers}"
    assert notes.read_text() == "my notes about this stream\n"
    assert notes.stat().st_mtime_ns == mtime
    if (out / SUMMARY).exists():
        after = {name: (out / name).read_bytes() for name in OUTPUTS if (out / name).exists()}
        assert after == before, "highlights.json beside outputs of another run"
    for name in OUTPUTS:  # what is there is whole: the first run's, or the re-run's entire
        path = out / name
        if path.exists() and path.read_bytes() != before[name]:
            assert whole(name, path.read_bytes(), before[name]), f"{name} is half-written"


def whole(name: str, data: bytes, reference: bytes) -> bool:
    """Whether an output file is complete (judged against a complete one of the same kind)."""
    if name.endswith(".png"):
        return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    if name.endswith(".csv"):
        return data.endswith(b"\n") and data.split(b"\n", 1)[0] == reference.split(b"\n", 1)[0]
    return data.endswith(b"}\n")


# -- the progress record survives, and the run finishes once there is room ------------------------

def test_full_disk_keeps_the_progress_record_and_the_rerun_finishes(media, env, tmpfs, tmp_path):
    import json

    from highlightsense.engine.resume import RECORD_NAME

    reference = tmp_path / "reference"
    assert detect(media, reference, env).returncode == 0
    out = tmpfs("out", 256)
    filler = fill(out, 28 * 1024)  # room for the record and the small files, not the plot
    proc = detect(media, out, env)
    line = assert_one_line_error(proc, out, NOSPACE)
    assert "run the same command again" in line and "will not score again" in line
    record = json.loads((out / RECORD_NAME).read_text())  # intact: whole JSON, every window
    assert record["phase"] == 3 and len(record["windows"]) > 0

    filler.unlink()  # the user frees space, and runs the same command again
    again = detect(media, out, env)
    assert again.returncode == 0, again.stderr
    assert not (out / RECORD_NAME).exists()
    assert (out / "raw_window_scores.csv").read_bytes() == \
        (reference / "raw_window_scores.csv").read_bytes()
    assert json.loads((out / SUMMARY).read_text())["highlights"] == \
        json.loads((reference / SUMMARY).read_text())["highlights"]
