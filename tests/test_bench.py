"""`highlightsense bench` (benchmarks/bench.py) and the seed's way (benchmarks/seed_way.py), smoke
runs on generated media with small models: the figures are measured and sane, the engine writes
no intermediates while the seed's way writes its WAVs, and with the same weights (and demucs's
random shift turned off) the two ways score the same windows alike; and the flags, checked
before any work, and the help."""
import errno
import json
import os
import re
import subprocess
import uuid

import numpy as np
import pytest

from highlightsense.benchmarks import bench_support as support
from highlightsense.benchmarks.bench import format_report, main
from highlightsense.engine import cli

SECONDS = 55  # one 60 s chunk for the seed's way, six windows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    media = support.generate_input(folder / "vod.m4a", SECONDS / 60, seed=3)
    crnn = support.write_random_crnn(folder / "crnn.pt", "small")
    separator = support.write_random_separator(folder / "separator", "tiny")
    return media, crnn, separator


def bench_json(capsys, argv) -> dict:
    assert main(argv + ["--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def check_engine(r: dict, stages) -> None:
    assert [s["name"] for s in r["stages"]] == list(stages)
    assert abs(r["audio_sec"] - SECONDS) < 0.5
    assert 0 < r["pipeline_wall_sec"] <= r["wall_sec"] < r["process_wall_sec"]
    assert r["x_realtime"] == pytest.approx(r["audio_sec"] / r["wall_sec"])
    assert 0 < r["first_window_sec"] < r["wall_sec"]
    for s in r["stages"]:
        assert 0 <= s["busy_sec"] and 0 <= s["busy_share"] <= 1.05, s
        assert s["x_realtime"] is None or s["x_realtime"] > 0
    assert r["stages"][0]["chunks_out"] >= SECONDS  # 1 s chunks from the decoder
    assert all(s["queue_max"] >= 1 for s in r["stages"][1:])
    assert r["peak_rss_mb"] > r["rss_before_mb"] > 50
    assert r["windows"] == len(r["confidences"]) == 6
    # No intermediates: no file data beyond the outputs and the progress record (ten seconds of
    # audio would be 1.7 MB); write_bytes adds the filesystem metadata of those files.
    assert r["output_bytes"] > 0 and r["record_saves"] >= 1
    assert r["file_write_calls_bytes"] < 4096
    assert r["disk_bytes"] < 1 << 20
    assert r["device"]["torch_threads"] >= 1 and r["device"]["cpus"] >= 1


def test_bench_loudness_and_one_stage(files, capsys):
    media = str(files[0])
    r = bench_json(capsys, ["--input", media])["engine"]
    check_engine(r, ["decode", "loudness_features", "windows", "score", "collect"])
    assert r["model_compute"] == {} and r["wall_over_model"] is None
    assert r["second_pass"] is None
    assert "end to end" in format_report({"engine": r})

    one = bench_json(capsys, ["--input", media, "--stage", "loudness_features"])["engine"]
    assert one["stage"] == "loudness_features" and one["prep_sec"] > 0
    assert [s["name"] for s in one["stages"]] == ["replay", "loudness_features", "drain"]
    row = one["stages"][1]
    assert row["chunks_in"] >= SECONDS and row["busy_sec"] > 0
    assert row["x_realtime"] == pytest.approx(one["audio_sec"] / row["busy_sec"])
    assert "alone, fed from memory" in format_report({"engine": one})


def test_engine_and_seed_way_on_the_same_weights(files, capsys):
    media, crnn, separator = map(str, files)
    # the old spelling of one flag, the new of the other: both are taken
    report = bench_json(capsys, ["--input", media, "--model", crnn, "--separator", separator,
                                 "--device", "cpu", "--batch-size", "4", "--compare-seed",
                                 "--notebook-shifts", "0"])
    engine, seed, comparison = report["engine"], report["seed"], report["comparison"]

    check_engine(engine, ["decode", "separate", "features", "windows", "score", "collect"])
    demucs, scorer = engine["model_compute"]["demucs"], engine["model_compute"]["crnn"]
    assert demucs["calls"] > 0 and scorer["calls"] >= 2  # batches of 4 windows, two passes
    assert 0 < engine["model_compute_sec"] == pytest.approx(demucs["sec"] + scorer["sec"])
    assert engine["wall_over_model"] == pytest.approx(
        engine["wall_sec"] / engine["model_compute_sec"])
    assert engine["models"]["separator_class"] == "HTDemucs"
    assert engine["second_pass"] is None or engine["second_pass"]["wall_sec"] > 0

    # The seed's way goes through the disk: the 60 s chunk, demucs's two stems, the joined
    # stems (16-bit WAVs) and the spectrogram, far more than the audio as one 16-bit WAV.
    wav_bytes = SECONDS * 44100 * 2 * 2
    assert seed["demucs_processes"] == 1 and seed["intermediate_files"] == 6
    assert seed["intermediate_bytes"] > 4 * wav_bytes
    if seed["filesystem_work"] != "tmpfs":  # write_bytes never counts a tmpfs
        assert seed["disk_bytes"] > 4 * wav_bytes
    assert 0 < seed["first_window_sec"] < seed["wall_sec"]
    assert seed["peak_rss_mb"] >= seed["demucs_peak_rss_mb"] > 50
    assert seed["model_compute"]["crnn"]["calls"] == seed["windows"] == 6

    # Same windows, same weights: the scores agree (the seed's 16-bit WAVs are what differ).
    a, b = np.array(engine["confidences"]), np.array(seed["confidences"])
    assert len(a) == len(b)
    assert np.abs(a - b).max() < 1e-3
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    la, lb = logit(a), logit(b)
    assert np.corrcoef(la, lb)[0, 1] > 0.95
    assert np.abs(la - lb).max() < la.std()  # the ways differ less than the windows do
    assert comparison["scores"]["windows_seed"] == 6

    ratios = comparison["ratios"]
    assert ratios["wall_seed_over_engine"] == pytest.approx(seed["wall_sec"] / engine["wall_sec"])
    assert ratios["first_window_engine_over_seed"] > 0
    names = [t["target"] for t in comparison["targets"]]
    assert len(names) == 4 and all(isinstance(t["met"], bool) for t in comparison["targets"])
    text = format_report(report)
    assert "== the notebook's way ==" in text and "== targets ==" in text
    assert "== engine vs the notebook's way" in text and "seed" not in text


# ---- the flags: one line and exit status 1, before any work ------------------------------------

def bench_error(capsys, argv) -> str:
    """The one line `highlightsense bench ARGV` fails with (exit status 1, nothing on stdout)."""
    assert cli.main(["bench", *argv]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize("argv, says", [
    (["--tmp", "{tmp}/absent"], "--tmp {tmp}/absent: no such folder"),
    (["--tmp", "{tmp}/a-file"], "--tmp {tmp}/a-file: not a folder"),
    (["--input", "{tmp}/absent.mp4"], "cannot read --input {tmp}/absent.mp4: No such file"),
    (["--input", "{tmp}"], "--input {tmp} is a folder"),
    (["--model", "{tmp}/absent.pt"], "cannot read --model"),
    (["--random-model", "--separator", "{tmp}/absent.th"], "no separator file or folder"),
    (["--json-out", "{tmp}/absent/r.json"], "cannot write --json-out {tmp}/absent/r.json"),
    (["--json-out", "{tmp}"], "--json-out {tmp} is a folder"),
    (["--minutes", "0"], "--minutes takes a positive number, not 0"),
    (["--minutes", "nan"], "--minutes must be a finite number, not nan"),
    (["--rss-minutes", "10", "-1"], "--rss-minutes takes a positive number, not -1"),
    (["--input-seed", "-1"], "--input-seed takes a whole number of at least 0"),
    (["--notebook-shifts", "-2"], "--notebook-shifts takes a whole number of at least 0"),
    (["--seed-shifts", "-2"], "--notebook-shifts takes"),  # the old spelling, the same flag
    (["--threads", "0"], "--threads takes a whole number of at least 1"),
    (["--batch-size", "0"], "--batch-size takes a whole number of at least 1"),
    (["--separator-batch", "-3"], "--separator-batch takes a whole number of at least 1"),
    (["--container", "webm"], "--container webm: the generated VOD can be m4a"),
    (["--compare-notebook", "--stage", "decode"], "--compare-notebook runs whole jobs"),
    (["--separator", "htdemucs"], "a separator runs only with a CRNN"),
    (["--device", "tpu7"], "unknown device 'tpu7'"),
])
def test_a_bad_flag_is_one_line_before_any_work(tmp_path, capsys, argv, says):
    (tmp_path / "a-file").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    extra = [] if "--tmp" in argv else ["--tmp", str(work)]
    line = bench_error(capsys, argv + extra)
    assert says.replace("{tmp}", str(tmp_path)) in line
    assert not any(work.iterdir())  # nothing generated, no work folder made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "work"]


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write in: read-only permissions, or for root (whom
    permissions do not stop) a read-only tmpfs."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder, os.strerror(errno.EACCES)
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("root, and no tmpfs can be mounted here")
    try:
        yield folder, os.strerror(errno.EROFS)
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_an_unwritable_folder_is_one_line_before_any_work(unwritable, tmp_path, capsys):
    folder, reason = unwritable
    line = bench_error(capsys, ["--tmp", str(folder)])
    assert line == f"error: bench: cannot make a work folder in {folder}: {reason}"
    target = folder / f"report-{uuid.uuid4().hex}.json"
    line = bench_error(capsys, ["--json-out", str(target), "--tmp", str(tmp_path)])
    assert line == f"error: bench: cannot write --json-out {target}: {reason}"
    assert [p.name for p in tmp_path.iterdir()] == ["locked"]


def test_json_out_is_checked_without_being_left_behind(tmp_path, capsys):
    """The --json-out check creates no file of its own when the run then stops."""
    target = tmp_path / "r.json"
    bench_error(capsys, ["--json-out", str(target), "--minutes", "-1"])
    assert not target.exists()


def test_a_failing_job_is_one_line(files, tmp_path, capsys):
    """A checkpoint that is no checkpoint is found in the engine's job (its process): the bench
    says the job's own one-line error, no traceback."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    line = bench_error(capsys, ["--input", str(files[0]), "--model", str(bad), "-q"])
    assert line.startswith("error: bench: the engine job stopped: ")
    assert str(bad) in line


def test_help_says_notebook_and_reads_as_words(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "Measure what the engine costs" in text and "--compare-notebook" in text
    assert "notebook's way" in text
    # "seed" only as a random one (--input-seed): the notebook is called the notebook
    assert "seed" not in text.lower().replace("random seed", "").replace("--input-seed", "")
    placeholders = set(re.findall(r"\b[A-Z][A-Z_]{2,}\b", text)) - {"RSS", "CRNN", "JSON",
                                                                       "WAV", "VOD", "CUDA",
                                                                       "OMP", "MKL"}
    assert placeholders <= {"FILE", "DIR", "PATH", "NAME", "NAME_OR_PATH", "SIZE", "FORMAT"}, \
        placeholders
