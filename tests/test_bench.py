"""`highlightsense bench` (benchmarks/bench.py) and the seed's way (benchmarks/seed_way.py), smoke
runs on generated media with small models: the figures are measured and sane, the engine writes
no intermediates while the seed's way writes its WAVs, and with the same weights (and demucs's
random shift turned off) the two ways score the same windows alike."""
import json

import numpy as np
import pytest

from highlightsense.benchmarks import bench_support as support
from highlightsense.benchmarks.bench import format_report, main

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
    report = bench_json(capsys, ["--input", media, "--model", crnn, "--separator", separator,
                                 "--device", "cpu", "--batch-size", "4", "--compare-seed",
                                 "--seed-shifts", "0"])
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
    assert "== the seed's way ==" in text and "== targets ==" in text
