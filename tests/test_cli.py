"""`highlightsense detect` and `select` end to end, on media the tests generate."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from highlightsense.benchmarks.media import corrupt_bytes, write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine import grid
from highlightsense.engine.cli import main
from highlightsense.operators.sources.decode import AudioDecoder
from processes import interruptible, wait_for_line

MOMENTS = [(40.0, 50.0), (95.0, 104.0)]
SEED_SCORE_COLUMNS = ["window_index", "start_sec", "end_sec", "confidence"]
SEED_CLIP_COLUMNS = ["rank", "start_sec", "end_sec", "start_ts", "end_ts", "duration_sec",
                     "confidence", "clip_path"]


def decoded_samples(path) -> int:
    return sum(c.samples.shape[1] for c in AudioDecoder(str(path)))


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def vod(tmp_path_factory):
    """150 s of synthetic game stream with two known moments, video keyframes every 2 s."""
    path = tmp_path_factory.mktemp("vod") / "stream.mp4"
    v = SyntheticVod(150, seed=3, moments=MOMENTS, music=[], bangs=[(70.0, 70.2)])
    return write_media(path, v.blocks(), video=True, fps=10, gop=20)


def test_detect_writes_the_seeds_outputs_and_clips(vod, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["detect", vod, "--out", out, "--threshold-percentile", "60", "-q"], capsys)
    assert code == 0, err
    header, rows = read_csv(out / "raw_window_scores.csv")
    assert header[:4] == SEED_SCORE_COLUMNS
    # Every window of the seed's grid is scored, the last ones (the flushed tail) included.
    total = grid.n_frames(decoded_samples(vod))
    assert len(rows) == grid.num_windows(total, 1292, 215)
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    assert float(rows[-1][2]) == (len(rows) - 1) * 215 * 512 / 22050 + 1292 * 512 / 22050

    header, clips = read_csv(out / "final_clips_metadata.csv")
    assert header[:8] == SEED_CLIP_COLUMNS
    summary = json.loads((out / "highlights.json").read_text())
    assert summary["windows"] == len(rows) and len(summary["highlights"]) == len(clips) >= 2
    for (start, end) in MOMENTS:  # a chosen clip holds (at least 90% of) each known moment
        assert any(min(end, float(c[2])) - max(start, float(c[1])) >= 0.9 * (end - start)
                   for c in clips)
    for c in clips:
        path = c[7]
        assert path.endswith(".mp4") and os.path.exists(path)
        assert c[11] == "copy"
        real_start, real_end = float(c[9]), float(c[10])
        assert float(c[1]) - 2.0 <= real_start <= float(c[1])  # snapped to the keyframe before
        clip_len = decoded_samples(path) / 44100
        assert abs(clip_len - (real_end - real_start)) < 0.1
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rank" in stdout and "outputs in" in stdout
    assert not list(out.glob(".*.part"))


def test_select_reruns_from_saved_scores_without_the_audio(vod, tmp_path, capsys):
    src = tmp_path / "copy.mp4"
    src.write_bytes(vod.read_bytes())
    out = tmp_path / "out"
    assert run(["detect", src, "--out", out, "--threshold-percentile", "50", "--no-clips", "-q"],
               capsys)[0] == 0
    _, before = read_csv(out / "final_clips_metadata.csv")
    src.unlink()  # select must not need the audio
    code, stdout, err = run(
        ["select", out, "--threshold-percentile", "50", "--top-n", "1", "--no-clips", "-q"],
        capsys)
    assert code == 0, err
    _, after = read_csv(out / "final_clips_metadata.csv")
    assert len(before) > 1 and len(after) == 1
    assert after[0][1:7] == before[0][1:7]
    code, _, err = run(["select", out, "--top-n", "1", "-q"], capsys)  # clips need the source
    assert code == 1 and "is gone" in err


def test_audio_only_source_gives_audio_clips(tmp_path, capsys):
    v = SyntheticVod(90, seed=1, moments=[(30.0, 40.0)], music=[], bangs=[])
    src = write_media(tmp_path / "talk.m4a", v.blocks())
    out = tmp_path / "out"
    assert run(["detect", src, "--out", out, "--threshold-percentile", "90", "-q"], capsys)[0] == 0
    clips = list((out / "clips").iterdir())
    assert clips and all(c.suffix == ".m4a" for c in clips)


def test_audio_shorter_than_a_window_scores_one_padded_window(tmp_path, capsys):
    src = write_media(tmp_path / "short.wav", [np.full((2, 44100 * 10), 0.1, np.float32)])
    out = tmp_path / "out"
    assert run(["detect", src, "--out", out, "-q", "--no-clips"], capsys)[0] == 0
    _, rows = read_csv(out / "raw_window_scores.csv")
    assert len(rows) == 1
    assert float(rows[0][1]) == 0.0
    assert float(rows[0][2]) == grid.n_frames(44100 * 10) * 512 / 22050


def test_digital_silence_warns_and_chooses_nothing(tmp_path, capsys):
    src = write_media(tmp_path / "silence.flac", [np.zeros((2, 44100 * 45), np.float32)])
    code, stdout, err = run(["detect", src, "--out", tmp_path / "out", "-q"], capsys)
    assert code == 0
    assert "nothing stands out" in err
    assert "No highlights found." in stdout
    assert not (tmp_path / "out" / "clips").exists()


@pytest.mark.parametrize("rate, channels", [(8000, 1), (48000, 6), (96000, 2)])
def test_other_rates_and_layouts(tmp_path, capsys, rate, channels):
    seconds = 40
    t = np.arange(rate * seconds) / rate
    signal_ = (0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    src = write_media(tmp_path / "in.wav", [np.tile(signal_, (channels, 1))], rate=rate,
                      channels=channels)
    out = tmp_path / "out"
    assert run(["detect", src, "--out", out, "-q", "--no-clips"], capsys)[0] == 0
    _, rows = read_csv(out / "raw_window_scores.csv")
    assert len(rows) == grid.num_windows(grid.n_frames(seconds * 44100), 1292, 215)


def test_corrupt_packets_are_skipped_with_a_warning(vod, tmp_path, capsys):
    bad = corrupt_bytes(vod, tmp_path / "bad.mp4", offset_frac=0.5, n_bytes=4096)
    code, _, err = run(["detect", bad, "--out", tmp_path / "out", "-q", "--no-clips"], capsys)
    assert code == 0
    assert "warning:" in err and "00:0" in err  # says where, in stream time
    assert (tmp_path / "out" / "highlights.json").exists()


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "nope.mp4", "no such file"),
    (lambda d: (d / "noise.bin").write_bytes(np.random.default_rng(0).bytes(50_000))
     and d / "noise.bin",
     "not a media file"),
    (lambda d: write_media(d / "silent_film.mp4", [], video=True, audio=False, video_sec=3),
     "no audio stream"),
])
def test_bad_input_is_one_line_and_leaves_nothing_complete(tmp_path, capsys, make, words):
    src = make(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run(["detect", src, "--out", out, "-q"], capsys)
    assert code == 1
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
    assert not (out / "highlights.json").exists()


def test_unwritable_output_folder(vod, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["detect", vod, "--out", blocker / "out", "-q"], capsys)
    assert code == 1 and "cannot write to output folder" in err and "--out" in err


def test_bad_settings_are_refused_by_name(vod, tmp_path, capsys):
    code, _, err = run(["detect", vod, "--out", tmp_path / "o", "--window-sec", "60"], capsys)
    assert code == 1 and "window_sec" in err and "under 60 s" in err


def test_ctrl_c_stops_promptly_even_while_the_input_stalls(tmp_path):
    """A pipe that stops delivering (a stalled source): Ctrl-C still ends the run at once."""
    wav = write_media(tmp_path / "a.wav", [np.full((2, 44100 * 20), 0.1, np.float32)])
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "highlightsense", "detect", str(fifo), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=interruptible)
    with open(fifo, "wb") as writer:  # all the audio, but the pipe stays open: no end of stream
        writer.write(wav.read_bytes())
        writer.flush()
        try:
            # Once the pipeline runs (the scorer is announced), its decoder blocks on the pipe.
            err = wait_for_line(proc.stderr, b"scoring with", timeout=60)
            time.sleep(1)
            began = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=10)
        finally:
            proc.kill()
    assert time.monotonic() - began < 5
    assert proc.returncode == 130
    assert b"interrupted" in err + rest
    assert not (out / "highlights.json").exists()


def test_version(capsys):
    from highlightsense import __version__

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"highlightsense {__version__}\n"  # e.g. "... 0.1.0"
