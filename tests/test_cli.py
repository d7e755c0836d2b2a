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
    # The folder's last --no-clips holds until --clips: then the source is needed.
    assert run(["select", out, "--top-n", "2", "-q"], capsys)[0] == 0
    code, _, err = run(["select", out, "--top-n", "1", "--clips", "-q"], capsys)
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


# ---- the CLI's flags and Config: one source of defaults -----------------------------------------

CONFIG_COMMANDS = ("detect", "select", "watch", "train", "batch")  # these read a Config


def _commands():
    import argparse

    from highlightsense.engine.cli import parser

    p = parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_help_shows_configs_defaults():
    """No default is written in a help string: every "(default X)" of a flag that sets a Config
    key is Config's default, and flags that set one leave argparse's default at None."""
    import argparse
    import re

    from highlightsense.engine.config import Config, default_of

    commands = _commands()
    shown = 0
    for name in CONFIG_COMMANDS:
        formatter = argparse.HelpFormatter(name)
        for action in commands[name]._actions:
            if action.dest not in Config.__dataclass_fields__:
                continue
            assert action.default is None, (name, action.dest)
            text = formatter._expand_help(action) if action.help else ""
            for value in re.findall(r"\(default ([^):]+)\)", text):
                parse = action.type or str
                assert parse(value) == getattr(Config(), action.dest), (name, text)
                shown += 1
    assert shown >= 9  # window, stride, percentile, NMS (x3), top N, fragments (x2), ...
    # ... and none is written out in the source, even one that agrees with Config today.
    import inspect

    from highlightsense.engine import cli

    assert not re.findall(r"\(default:? [0-9]", inspect.getsource(cli))
    rolling = next(a for a in commands["watch"]._actions if a.dest == "rolling_percentile")
    assert f"from the config: {default_of('threshold_percentile')})" in rolling.help


def test_every_config_flag_reaches_config(tmp_path):
    """The flag table is the parser's: each flag whose dest is a Config field sets that key."""
    from highlightsense.engine import cli
    from highlightsense.engine.config import Config

    table = cli.config_flags()
    # The other commands (demo, export, review, evaluate) read no Config: no flag sets a key.
    assert set(table) >= set(CONFIG_COMMANDS) | {"demo", "evaluate"}
    assert all(table[name] == {} for name in set(table) - set(CONFIG_COMMANDS))
    # The keys the hand-kept tuple listed before, all still settable by a flag.
    assert set().union(*(t.values() for t in table.values())) == {
        "window_sec", "stride_sec", "threshold_percentile", "nms_window", "top_n", "clips",
        "exact_cuts", "audio_stream", "batch_size", "model", "separator", "device",
        "separator_batch", "half", "exact_reference", "threshold", "hls_fragments",
        "max_duration_sec", "order", "voice_track", "game_track", "tracks",
        "allow_private_hosts", "shard_minutes"}
    positional = {"detect": ["in.mp4", "--out", "o"], "select": ["o"], "watch": ["http://x"],
                  "train": ["--out", "m.pt"], "batch": ["in.mp4", "--out", "o"]}
    commands = _commands()
    for name, flags in table.items():
        actions = {a.option_strings[-1]: a for a in commands[name]._actions if a.option_strings}
        for flag, key in flags.items():
            action, default = actions[flag], getattr(Config(), key)
            if action.nargs == 0:  # --half, --no-clips, --single-pass, --exact-cuts
                argv, want = [flag], action.const
                if want == default:  # --clips, --copy-cuts: they undo a config's setting
                    other = tmp_path / f"{key}.yaml"
                    other.write_text(f"{key}: {str(not want).lower()}\n")
                    argv = [flag, "--config", str(other)]
            elif key in ("voice_track", "game_track"):  # given together, as they must be
                want = {"voice_track": "3", "game_track": "4+5"}[key]
                argv = ["--voice-track", "3", "--game-track", "4+5"]
            elif action.choices:
                want = next(c for c in action.choices if c != default)
                argv = [flag, want]
            elif action.type is cli._duration:
                argv, want = [flag, "1:00:00"], 3600.0
            elif action.type in (int, float):
                want = (0.5 if key == "threshold" else action.type(2) if default is None
                        else default / 2 if action.type is float else default + 1)
                argv = [flag, str(want)]
            else:
                argv, want = [flag, "other"], "other"
            assert want != default or "--config" in argv, (name, flag)
            args = cli.parser().parse_args([name, *positional.get(name, []), *argv])
            assert getattr(cli._config(args), key) == want, (name, flag)


def test_other_commands_do_not_import_the_bench():
    """Measurement code stays out of the product's runs: `select` (and the parser, --help)
    leave benchmarks.bench unimported; `bench --help` still shows its flags."""
    script = (
        "import sys, contextlib, io\n"
        "from highlightsense.engine.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'bench' in out.getvalue(), out.getvalue()\n"
        "code = main(['select', sys.argv[1]])\n"
        "print(code, sorted(m for m in sys.modules\n"
        "                   if m.startswith('highlightsense.benchmarks')))\n")
    done = subprocess.run([sys.executable, "-c", script, "no-such-run"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 []"
    done = subprocess.run([sys.executable, "-m", "highlightsense", "bench", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--compare-notebook" in done.stdout and "--stage" in done.stdout
    assert "what the engine costs" in done.stdout  # its description, from benchmarks/bench.py


def test_one_hh_mm_ss_formatter():
    """decode's log times and the tables' start_ts / end_ts: the seed's HH:MM:SS, truncated."""
    from highlightsense.engine.progress import clock
    from highlightsense.engine.timecode import hms
    from highlightsense.operators.sinks import tables
    from highlightsense.operators.sources import decode

    assert tables.to_timestamp is hms and decode.hms is hms
    cases = {0: "00:00:00", 59.999: "00:00:59", 61.5: "00:01:01", 3599.9: "00:59:59",
             3600: "01:00:00", 86399: "23:59:59", 86400.0: "24:00:00",
             99 * 3600 + 59 * 60 + 59.9: "99:59:59", 360000: "100:00:00",
             1_000_000.25: "277:46:40", -3: "00:00:00"}
    assert {t: hms(t) for t in cases} == cases
    # The seed's own arithmetic (floor divisions of the float), for any time a table holds.
    seed = lambda s: f"{int(s // 3600):02d}:{int((s % 3600) // 60):02d}:{int(s % 60):02d}"
    rng = np.random.default_rng(0)
    for t in np.concatenate([rng.uniform(0, 400_000, 20_000), np.arange(0, 7300, 0.25)]):
        assert hms(float(t)) == seed(float(t))
    # The progress line's clock is another format on purpose: M:SS, hours only when there are.
    assert [clock(t) for t in (5, 65.9, 3600, 36000)] == ["0:05", "1:05", "1:00:00", "10:00:00"]


# ---- what a newcomer tripped on (issue 14) ------------------------------------------------------

def _table(out):
    header, rows = read_csv(out / "final_clips_metadata.csv")
    return [dict(zip(header, r)) for r in rows]


def test_no_clips_on_an_earlier_runs_folder_removes_its_clips_only(vod, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["detect", vod, "--out", out, "--threshold-percentile", "50", "-q"],
               capsys)[0] == 0
    cut = sorted(p.name for p in (out / "clips").iterdir())
    assert len(cut) >= 2 and all(p.startswith("highlight_0") for p in cut)
    mine = {"highlight_notes.txt": b"mine", "highlight_best.mp4": b"mine", "edit.mp4": b"mine"}
    for name, data in mine.items():  # a user's files, some named like ours
        (out / "clips" / name).write_bytes(data)
    os.symlink(vod, out / "clips" / "highlight_99_0h00m00s.mp4")  # a link is never ours

    assert run(["select", out, "--top-n", "1", "-q"], capsys)[0] == 0
    left = {p.name for p in (out / "clips").iterdir()}
    assert left == {_table(out)[0]["clip_path"].rsplit("/", 1)[-1],
                    "highlight_99_0h00m00s.mp4", *mine}

    for command in (["select", out, "--no-clips", "-q"],
                    ["detect", vod, "--out", out, "--no-clips", "-q"]):
        assert run(command, capsys)[0] == 0
        assert {p.name for p in (out / "clips").iterdir()} == {"highlight_99_0h00m00s.mp4", *mine}
        assert all(r["clip_path"] == "" for r in _table(out))
        assert (out / "clips" / "highlight_notes.txt").read_bytes() == b"mine"


def test_a_closed_pipe_prints_no_traceback(vod, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["detect", vod, "--out", out, "--no-clips", "--threshold-percentile", "50", "-q"],
               capsys)[0] == 0
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`| head` that quit)
    proc = subprocess.run([sys.executable, "-m", "highlightsense", "select", str(out)],
                          stdout=write, stderr=subprocess.PIPE, timeout=120)
    os.close(write)
    assert proc.returncode == 141
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr


def test_a_one_window_input_is_chosen_as_the_notebook_chooses_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = write_media(tmp_path / "five.wav",
                      [(0.2 * rng.standard_normal((2, 44100 * 5))).astype(np.float32)])
    for flags in ([], ["--threshold"]):  # the 99th percentile; an absolute threshold below it
        if flags:
            flags.append(str(float(_scores(tmp_path / "out0")[0][3]) / 2))
        out = tmp_path / f"out{len(flags)}"
        code, stdout, err = run(["detect", src, "--out", out, "-q", *flags], capsys)
        assert code == 0, err
        assert "nothing stands out" not in err
        rows = _table(out)
        assert len(rows) == 1 and os.path.exists(rows[0]["clip_path"])
        first = stdout.splitlines()[0]
        assert first.startswith("1 window, 1 at or above ") and first.endswith(
            ", 1 after NMS, top 1:"), first
        summary = json.loads((out / "highlights.json").read_text())
        assert summary["windows_above_threshold"] == summary["after_nms"] == 1


def test_a_flat_curve_says_so_in_the_summary(tmp_path, capsys):
    src = write_media(tmp_path / "silence.flac", [np.zeros((2, 44100 * 45), np.float32)])
    code, stdout, err = run(["detect", src, "--out", tmp_path / "out", "-q"], capsys)
    assert code == 0
    assert stdout.splitlines()[0].endswith("nothing stands out, no clips chosen")
    assert stdout.splitlines()[0].startswith(f"{len(_scores(tmp_path / 'out'))} windows, all")


def _scores(out):
    return read_csv(out / "raw_window_scores.csv")[1]


def test_a_missing_input_makes_no_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["detect", tmp_path / "nope.mp4", "--out", out, "-q"], capsys)
    assert code == 1 and "no such file" in err and not out.exists()
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(50_000))
    code, _, err = run(["detect", noise, "--out", out, "-q"], capsys)
    assert code == 1 and "not a media file" in err and not out.exists()


@pytest.mark.parametrize("flags, words", [
    (["--device", "gpu9"], "unknown device 'gpu9'"),
    (["--device", "cuda"], "CUDA GPU"),  # this machine has none
    (["--half"], "--half runs on CUDA only"),
])
def test_device_and_half_are_checked_without_a_model_too(vod, tmp_path, capsys, flags, words):
    out = tmp_path / "out"
    code, _, err = run(["detect", vod, "--out", out, "-q", *flags], capsys)
    assert code == 1 and words in err and err.count("\n") == 1
    assert not out.exists()


def test_select_starts_from_the_folders_last_settings(vod, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["detect", vod, "--out", out, "--threshold-percentile", "70", "--top-n", "3",
                "--nms-window", "5", "--no-clips", "--order", "time", "-q"], capsys)[0] == 0
    first = _table(out)
    assert len(first) >= 2
    starts = [float(r["start_sec"]) for r in first]
    assert starts == sorted(starts)  # listed by time; the ranks keep the scores' order
    by_rank = sorted(first, key=lambda r: int(r["rank"]))
    assert [float(r["confidence"]) for r in by_rank] == sorted(
        (float(r["confidence"]) for r in first), reverse=True)

    code, stdout, err = run(["select", out, "--top-n", "2"], capsys)
    assert code == 0, err
    said = next(line for line in err.splitlines() if "folder's last selection" in line)
    for words in ("--threshold-percentile 70", "--order time", "--no-clips", "--nms-window 5"):
        assert words in said, said
    assert "--top-n" not in said  # given: not the folder's
    settings = json.loads((out / "highlights.json").read_text())["settings"]
    assert (settings["threshold_percentile"], settings["top_n"], settings["nms_window"],
            settings["order"], settings["clips"]) == (70.0, 2, 5.0, "time", False)

    # An absolute threshold replaces the percentile; a percentile then clears the threshold.
    assert run(["select", out, "--threshold", "0.2", "-q"], capsys)[0] == 0
    assert json.loads((out / "highlights.json").read_text())["threshold"] == 0.2
    assert run(["select", out, "--threshold-percentile", "90", "-q"], capsys)[0] == 0
    summary = json.loads((out / "highlights.json").read_text())
    assert summary["settings"]["threshold"] is None
    assert summary["threshold"] == pytest.approx(
        np.percentile([float(r[3]) for r in _scores(out)], 90))


def test_clips_are_named_by_rank_and_start_and_their_cutting_shows(vod, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["detect", vod, "--out", out, "--threshold-percentile", "50",
                             "--top-n", "2"], capsys)
    assert code == 0, err
    rows = _table(out)
    for r in rows:
        start = int(float(r["start_sec"]))
        name = f"highlight_{int(r['rank']):02d}_0h{start // 60:02d}m{start % 60:02d}s.mp4"
        assert r["clip_path"].endswith("/clips/" + name)
    assert [line for line in err.splitlines() if line.startswith("cutting clip")] == [
        f"cutting clip {k} of 2 ({r['start_ts']} to {r['end_ts']})"
        for k, r in enumerate(rows, 1)]


def test_a_resume_that_cuts_the_clips_again_says_so(vod, tmp_path, capsys, monkeypatch):
    from highlightsense.engine import detect as detect_module

    out = tmp_path / "out"
    real = detect_module.finish

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the clips are cut: the scores are saved

    monkeypatch.setattr(detect_module, "finish", interrupted)
    command = ["detect", vod, "--out", out, "--top-n", "2", "--threshold-percentile", "50"]
    assert run(command, capsys)[0] == 130
    monkeypatch.setattr(detect_module, "finish", real)
    code, _, err = run(command, capsys)
    assert code == 0, err
    assert "cutting the 2 clips again: the interrupted run had not finished them" in err
    assert "first pass" not in err and len(_table(out)) == 2


def test_help_describes_every_command(capsys):
    commands = _commands()
    for name, command in commands.items():
        command.format_help()  # bench declares its flags and text only when asked
        assert command.description and len(command.description) > 80, name
    watch_threshold = next(a for a in commands["watch"]._actions if a.dest == "threshold")
    assert "absolute score" in watch_threshold.help and watch_threshold.metavar == "SCORE"


def test_watch_on_a_file_points_to_detect_and_select_on_a_missing_folder(vod, tmp_path, capsys):
    code, _, err = run(["watch", vod], capsys)
    assert code == 1 and f"highlightsense detect {vod}" in err and err.count("\n") == 1
    code, _, err = run(["select", tmp_path / "gone"], capsys)
    assert code == 1 and "no such folder" in err and err.count("\n") == 1
