"""`batch --ray` on a real single-node Ray cluster, kept on loopback: started here (`ray start
--head` on 127.0.0.1, 2 CPUs) once for the module and stopped at its end. Every connection a
Ray process or this one makes while the cluster runs is checked to stay on 127.0.0.1. The
README's test command runs this module on its own after the rest (one cluster per test run, and
no other test's processes competing with the cluster's for memory and cores)."""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.cli import main
from highlightsense.engine.ray_workers import LOOPBACK_ENV

# Before Ray is imported (it reads this once): this process joins the cluster on 127.0.0.1
# instead of the address Ray finds routable.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# The cluster's token, given to it and to this process alike (Ray's token authentication;
# without it each side would look for ~/.ray/auth_token, which another cluster may have made).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
ray = pytest.importorskip("ray")  # highlightsense[ray]; CI installs it (.ci/run)

RAY = Path(sys.executable).with_name("ray")
_LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]|\*|0\.0\.0\.0"
                       r"|\[::\]):(\d+|\*)$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_pids(temp_dir: str) -> set:
    """This test process and every process of the cluster (its daemons name the temp dir; its
    workers are titled ray::...)."""
    pids = {os.getpid()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmd or cmd.startswith("ray::") or "/ray/" in cmd and "default_worker" in cmd:
            pids.add(int(entry.name))
    return pids


class ConnectionWatch(threading.Thread):
    """Samples `ss -tnap` every 100 ms; keeps every TCP socket of the cluster's processes (and
    this one's) whose local or peer address is not loopback."""

    def __init__(self, temp_dir: str):
        super().__init__(daemon=True)
        self.temp_dir, self.stop, self.outside, self.samples = temp_dir, threading.Event(), set(), 0

    def run(self):
        pids, listed = set(), 0.0
        while not self.stop.is_set():
            if time.monotonic() - listed > 1.0:  # reading /proc is the costly part
                pids, listed = _ray_pids(self.temp_dir), time.monotonic()
            lines = subprocess.run(["ss", "-tnapH"], capture_output=True, text=True).stdout
            for line in lines.splitlines():
                owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
                fields = line.split()
                if owners & pids and not all(_LOOPBACK.match(a) for a in fields[3:5]):
                    self.outside.add(" ".join(fields[:6]))
            self.samples += 1
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster():
    """A head on 127.0.0.1 (LOOPBACK_ENV: no routable address, no metadata or usage requests),
    2 CPUs; its address, and the watch on its connections."""
    temp_dir = tempfile.mkdtemp(prefix="hsray", dir="/tmp")  # short: Ray's socket paths
    port = _free_port()
    env = dict(os.environ, **LOOPBACK_ENV)
    watch = ConnectionWatch(temp_dir)
    watch.start()
    # A session of its own: a signal to the test run's process group leaves the cluster be.
    started = subprocess.run(
        [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
         "--object-store-memory=200000000", f"--temp-dir={temp_dir}"],
        env=env, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}", watch
    finally:
        watch.stop.set()
        watch.join()
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert watch.samples > 10
    assert not watch.outside, f"Ray connections off loopback: {sorted(watch.outside)}"


@pytest.fixture(scope="module")
def vods(tmp_path_factory):
    root = tmp_path_factory.mktemp("rayvods")
    made = []
    for i, seconds in enumerate((60, 240)):
        v = SyntheticVod(seconds, seed=20 + i, moments=[(20.0, 30.0)], music=[], bangs=[])
        made.append(write_media(root / f"vod{i}.mp4", v.blocks(), video=True, fps=10, gop=20))
    return made


def scores(folder: Path):
    return np.loadtxt(folder / "raw_window_scores.csv", delimiter=",", skiprows=1)


def test_batch_on_ray_with_one_bad_input(cluster, vods, tmp_path, capsys):
    address, _ = cluster
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"\x1a\x45\xdf\xa3 not matroska")
    out = tmp_path / "ray"
    code = main(["batch", str(vods[0]), str(bad), "--out", str(out), "--ray", address,
                 "--workers", "3", "-q"])
    stdout, stderr = capsys.readouterr()
    assert code == 1 and "1 done, 0 skipped, 1 failed of 2 inputs" in stdout, stderr
    assert "Traceback" not in stderr
    report = json.loads((out / "batch.json").read_text())
    assert report["settings"]["where"] == "ray" and report["settings"]["workers"] == 3
    done, failed = report["inputs"]
    assert done["status"] == "done" and failed["status"] == "failed"
    assert failed["error"].startswith(str(bad))
    # The driver wrote the folder and cut the clips from the scores the actor sent back: the
    # same as detect here.
    assert main(["detect", str(vods[0]), "--out", str(tmp_path / "alone"), "-q"]) == 0
    assert np.array_equal(scores(out / done["folder"]), scores(tmp_path / "alone"))
    assert len(list((out / done["folder"] / "clips").iterdir())) == done["highlights"] >= 1


def test_an_actor_killed_mid_task_is_restarted_and_its_task_retried(cluster, vods, tmp_path):
    """SIGKILL the process of the actor that is scoring: Ray starts the actor again and runs
    the task again; the results equal a run nobody killed."""
    address, _ = cluster
    killed = []

    def kill_the_busy_actor():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not killed:
            for entry in Path("/proc").iterdir():
                try:
                    cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if entry.name.isdigit() and cmd.startswith("ray::WorkerActor.run"):
                    time.sleep(1.0)  # well into the input
                    os.kill(int(entry.name), 9)
                    killed.append(int(entry.name))
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_busy_actor)
    killer.start()
    out = tmp_path / "killed"
    code = main(["batch", str(vods[1]), "--out", str(out), "--ray", address, "--workers", "1",
                 "-q"])
    killer.join()
    assert killed, "no actor was seen running a task"
    assert code == 0
    (entry,) = json.loads((out / "batch.json").read_text())["inputs"]
    assert entry["status"] == "done"
    assert main(["detect", str(vods[1]), "--out", str(tmp_path / "alone"), "-q"]) == 0
    assert np.array_equal(scores(out / entry["folder"]), scores(tmp_path / "alone"))


def test_the_watch_tells_loopback_from_other_addresses():
    assert all(_LOOPBACK.match(a) for a in ("127.0.0.1:6379", "[::1]:80", "*:*", "0.0.0.0:*",
                                            "[::ffff:127.0.0.1]:9"))
    assert not any(_LOOPBACK.match(a) for a in ("192.0.2.2:39019", "169.254.169.254:80",
                                                "[2001:db8::1]:443", "10.0.0.1:6379"))


def test_shards_on_ray_equal_a_single_run(cluster, vods, tmp_path):
    """A 4-minute input in shards of 1.3 minutes (off the window grid) over two actors: the
    loudness path's scores are the single run's, to the last digit."""
    address, _ = cluster
    out = tmp_path / "sharded"
    assert main(["batch", str(vods[1]), "--out", str(out), "--ray", address, "--workers", "2",
                 "--shard-minutes", "1.3", "-q"]) == 0
    (entry,) = json.loads((out / "batch.json").read_text())["inputs"]
    summary = json.loads((out / entry["folder"] / "highlights.json").read_text())
    # 1.3-minute spans, their edges moved to whole batches (16 windows with batch_size unset)
    assert [s["first_window"] for s in summary["shards"]] == [0, 16, 32]
    assert main(["detect", str(vods[1]), "--out", str(tmp_path / "alone"), "-q"]) == 0
    assert np.array_equal(scores(out / entry["folder"]), scores(tmp_path / "alone"))


def test_model_path_shards_on_ray_within_1e_5(cluster, vods, tmp_path):
    """The model path (a tiny random Demucs and a small random CRNN, written with the real
    classes): each actor holds its shards' levels from map to reduce, the reference is the
    shards' maximum; within 1e-5 of one run."""
    from highlightsense.benchmarks.bench_support import write_small_models

    address, _ = cluster
    separator, model = write_small_models(tmp_path / "models")
    flags = ["--model", str(model), "--separator", str(separator), "--window-sec", "10", "-q",
             "--no-clips"]
    out = tmp_path / "sharded"
    assert main(["batch", str(vods[0]), "--out", str(out), "--ray", address, "--workers", "2",
                 "--shard-minutes", "0.4", *flags]) == 0
    (entry,) = json.loads((out / "batch.json").read_text())["inputs"]
    assert entry["status"] == "done", entry["error"]
    assert main(["detect", str(vods[0]), "--out", str(tmp_path / "alone"), *flags]) == 0
    ours, alone = scores(out / entry["folder"]), scores(tmp_path / "alone")
    assert ours.shape == alone.shape
    assert np.array_equal(ours[:, :3], alone[:, :3])
    assert np.max(np.abs(ours[:, 3] - alone[:, 3])) < 1e-5
