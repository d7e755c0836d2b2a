"""`highlightsense batch` on this machine's worker processes: a folder per input equal to
detect's, a bad input recorded while the rest go on, finished inputs skipped, a killed worker
started again with its input resumed from the progress record. (Ray: tests/test_ray.py.)"""
import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.batch import BatchProgress, Entry, folder_name, run_batch
from highlightsense.engine.cli import main
from highlightsense.engine.config import load_config
from highlightsense.engine.resume import RECORD_NAME
from highlightsense.engine.workers import LocalWorkers


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two 75 s synthetic streams with a moment each, and a file that is no media."""
    root = tmp_path_factory.mktemp("batch")
    vods = []
    for i in range(2):
        v = SyntheticVod(75, seed=10 + i, moments=[(25.0 + 10 * i, 35.0 + 10 * i)], music=[],
                         bangs=[])
        vods.append(write_media(root / f"stream {i}.mp4", v.blocks(), video=True, fps=10,
                                gop=20))
    bad = root / "broken.mp4"
    bad.write_bytes(b"this is no video")
    return root, vods, bad


def test_a_folder_per_input_as_detect_writes_it_and_a_bad_input_recorded(media, tmp_path,
                                                                          capsys):
    root, (a, b), bad = media
    out = tmp_path / "batch"
    code = main(["batch", str(a), str(bad), str(b), "--out", str(out), "--workers", "2"])
    stdout, stderr = capsys.readouterr()
    assert code == 1  # one failed
    assert "2 done, 0 skipped, 1 failed of 3 inputs" in stdout
    assert "broken.mp4 is not a media file" in stderr and "Traceback" not in stderr
    rows = read_rows(out / "batch.csv")
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert [r["input"] for r in rows] == [str(a), str(bad), str(b)]
    assert rows[1]["error"].startswith(f"{bad} is not a media file")
    assert json.loads((out / "batch.json").read_text())["inputs"][0]["folder"] == rows[0]["folder"]
    for row in rows[::2]:
        assert float(row["duration_sec"]) == pytest.approx(75, abs=0.1)
        assert int(row["windows"]) > 0 and int(row["highlights"]) >= 1
    # Each folder holds what detect writes for that input, the same scores.
    assert main(["detect", str(a), "--out", str(tmp_path / "alone"), "-q"]) == 0
    capsys.readouterr()
    folder = out / rows[0]["folder"]
    assert (folder / "raw_window_scores.csv").read_text() == \
        (tmp_path / "alone" / "raw_window_scores.csv").read_text()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in (tmp_path / "alone").iterdir())
    assert len(list((folder / "clips").iterdir())) == int(rows[0]["highlights"])

    # Again: the finished ones are skipped (their folders untouched), the failed one retried.
    stamp = (folder / "highlights.json").stat().st_mtime_ns
    code = main(["batch", str(a), str(bad), str(b), "--out", str(out), "--workers", "1", "-q"])
    stdout, _ = capsys.readouterr()
    assert code == 1 and "0 done, 2 skipped, 1 failed" in stdout
    assert (folder / "highlights.json").stat().st_mtime_ns == stamp
    # Other scoring settings: scored again, not skipped.
    code = main(["batch", str(a), "--out", str(out), "--window-sec", "20", "-q"])
    stdout, _ = capsys.readouterr()
    assert code == 0 and "1 done, 0 skipped, 0 failed of 1 inputs" in stdout
    assert json.loads((folder / "highlights.json").read_text())["settings"]["window_sec"] == 20


def test_list_file_and_bad_arguments(media, tmp_path, capsys):
    root, (a, _), _ = media
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# the channel's VODs\n\n{a}\n{a}\n")
    out = tmp_path / "listed"
    assert main(["batch", "--list", str(listing), "--out", str(out), "-q"]) == 0
    assert [r["input"] for r in read_rows(out / "batch.csv")] == [str(a)]  # once
    capsys.readouterr()
    for args, words in [([], "batch needs inputs"),
                        (["--list", str(tmp_path / "missing.txt")], "cannot read --list"),
                        ([str(a), "--workers", "0"], "--workers must be at least 1")]:
        assert main(["batch", *args, "--out", str(tmp_path / "x")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err
    assert main(["detect", str(a), "--out", str(tmp_path / "x"), "--workers", "2"]) == 1
    assert "--workers goes with --shard-minutes" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("# nothing\n")
    assert main(["batch", "--list", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "x")]) == 1
    assert "names no inputs" in capsys.readouterr().err


def test_folder_names_are_readable_and_distinct(tmp_path):
    a, b = tmp_path / "one" / "My VOD (part 1).mkv", tmp_path / "two" / "My VOD (part 1).mkv"
    names = {folder_name(str(a)), folder_name(str(b)), folder_name("https://example.com/v/123"),
             folder_name("https://example.com/v/124")}
    assert len(names) == 4
    assert folder_name(str(a)).startswith("My-VOD-part-1-")
    assert folder_name(str(a)) == folder_name(str(a))


def test_progress_counts_hours_speed_and_eta():
    entries = [Entry("a", "a", status="done", duration_sec=3600.0),
               Entry("b", "b", status="running", duration_sec=1800.0),
               Entry("c", "c", status="pending", duration_sec=1800.0)]
    progress = BatchProgress(entries, show=False)
    progress.began -= 100.0  # 100 s of wall time for the hour done
    progress.ended(entries[0])
    line = progress.line()
    assert line.startswith("batch: 1/3 inputs, 1.00 h of audio in 1:40, 36.0x realtime")
    assert line.endswith("ETA 1:40")  # an hour left at 36x


def test_a_killed_worker_is_started_again_and_its_input_resumes(media, tmp_path):
    """SIGKILL the worker mid-input: the pool starts it again and sends the task again, which
    resumes from the progress record the dead worker left, to the uninterrupted scores."""
    root = tmp_path
    v = SyntheticVod(300, seed=5, moments=[(100.0, 110.0)], music=[], bangs=[])
    vod = write_media(root / "long.m4a", v.blocks())
    config = root / "often.yaml"
    config.write_text("progress_every_sec: 0.2\nclips: false\n")
    cfg = load_config(str(config))
    killed = []

    with LocalWorkers(1, 1) as pool:
        def kill_once_recorded():
            record = root / "out" / folder_name(str(vod)) / RECORD_NAME
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                data = json.loads(record.read_text() or "{}") if record.exists() else {}
                if data.get("phase") == 1 and data.get("windows"):  # mid-way through scoring
                    killed.append(pool.handles[0].pid)
                    os.kill(pool.handles[0].pid, signal.SIGKILL)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_once_recorded)
        killer.start()
        (entry,) = run_batch([str(vod)], root / "out", cfg, pool, show_progress=False)
        killer.join()
    assert killed, "the worker finished before it could be killed"
    assert entry.status == "done", entry.error
    folder = root / "out" / entry.folder
    summary = json.loads((folder / "highlights.json").read_text())
    assert summary["resumes"] and summary["resumes"][0]["window"] > 0
    assert not (folder / RECORD_NAME).exists()
    assert main(["detect", str(vod), "--out", str(root / "alone"), "--config", str(config),
                 "-q"]) == 0
    ours = np.loadtxt(folder / "raw_window_scores.csv", delimiter=",", skiprows=1)
    alone = np.loadtxt(root / "alone" / "raw_window_scores.csv", delimiter=",", skiprows=1)
    assert np.array_equal(ours, alone)
