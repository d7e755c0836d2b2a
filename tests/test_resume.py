"""Resuming an interrupted `detect`: each stage restarts exactly, and a run killed (SIGKILL) at
random points, resumed each time, ends with the uninterrupted run's scores and clips."""
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness import audio, run_operator
from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.cli import main
from highlightsense.engine import grid
from highlightsense.engine.resume import RECORD_NAME
from highlightsense.engine.second_pass import exact_from
from highlightsense.operators.sources import decode
from highlightsense.operators.sources.decode import SEEKS_EXACTLY, AudioDecoder
from highlightsense.operators.mel_features import MelFeatures
from highlightsense.operators.separate import STEMS


def _noise_blocks(rate, seconds, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(seconds):
        t = np.arange(rate) / rate + i
        x = (0.3 * np.sin(2 * np.pi * (220 + 13 * i) * t) + 0.05 * rng.standard_normal(rate))
        yield np.stack([x, 0.5 * x]).astype(np.float32)


def _decode(path, **kw):
    decoder = AudioDecoder(path, **kw)
    samples = np.concatenate([c.samples for c in decoder], axis=1)
    return samples, decoder


@pytest.mark.parametrize("name, rate, extra", [
    ("a.mp4", 48000, {"video": True}),  # AAC, resampled
    ("b.mkv", 48000, {}),  # whole-millisecond timestamps
    ("c.wav", 44100, {}),  # PCM: a seek lands off the first run's frame edges
    ("d.ts", 48000, {"drop": [(12.0, 13.5)], "start_sec": 3.7}),  # a hole, a late origin
    ("e.ogg", 48000, {}),  # Opus, with its pre-skip
])
def test_decoder_restart_gives_the_uninterrupted_samples(tmp_path, name, rate, extra):
    path = write_media(tmp_path / name, _noise_blocks(rate, 40), rate=rate, **extra)
    whole, first_run = _decode(path)
    assert len(first_run.info.sync_points) >= 4
    for start in (2 * 44100 + 17, 20 * 44100, 31 * 44100 + 12345, whole.shape[1] - 100):
        again, decoder = _decode(path, start_sample=start, sync_points=first_run.info.sync_points)
        assert again.shape[1] == whole.shape[1] - start
        assert np.array_equal(again, whole[:, start:]), (name, start)
        if start > 12 * 44100:  # resampling began near the start sample, not at the beginning
            assert start - decoder.decoded_from < 12 * 44100
            # PCM seeks; AAC and Opus decode every packet from the start (see the tests below).
            assert decoder.restarted_by == (
                "seek" if first_run.info.codec in SEEKS_EXACTLY else "skip"), name


def _harsh_blocks(rate, seconds, seed=0):
    """Loud noise over two tones with a click every 0.1 s: what makes codecs fill noise, dither
    and switch to short blocks, at the low bitrates below."""
    rng = np.random.default_rng(seed)
    clicks = np.where(np.arange(rate) % (rate // 10) < rate // 200, 3.0, 0.3)
    for i in range(seconds):
        t = np.arange(rate) / rate + i
        x = 0.2 * np.sin(2 * np.pi * (220 + 13 * i) * t) + 0.3 * rng.standard_normal(rate)
        y = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.3 * rng.standard_normal(rate)
        yield np.clip(np.stack([x, y]) * clicks, -1, 1).astype(np.float32)


def _vod_blocks(rate, seconds):
    """The synthetic VOD (voice, noise, bangs), its 44.1 kHz blocks taken as `rate`."""
    return SyntheticVod(seconds * rate / 44100, seed=3, bangs=[(7.0, 7.2)]).blocks()


def _hissy(vod: SyntheticVod, seed=0):
    """The VOD's blocks with a steady hiss under them: FFmpeg's AAC encoder (noise substitution,
    aac_pns, on by default) then fills noise in some band of nearly every frame."""
    rng = np.random.default_rng(seed)
    for block in vod.blocks():
        yield np.clip(block + 0.01 * rng.standard_normal(block.shape), -1, 1).astype(np.float32)


def _restarts(path, starts):
    """The whole decode, and a restart at each of `starts`: (samples, decoder) each."""
    whole, first_run = _decode(path)
    return whole, [_decode(path, start_sample=s, sync_points=first_run.info.sync_points)
                   for s in starts]


RESTART_AT = (12 * 44100 + 7, 21 * 44100 + 12345)  # past sync points with room to seek back

# Each decoder in SEEKS_EXACTLY, fed what is hardest for it (file, encoder, rate, encoder
# options, content, the decoder FFmpeg picks).
SEEKING = [
    ("a.wav", "pcm_s16le", 48000, {}, _harsh_blocks, "pcm_s16le"),
    ("b.wav", "pcm_s24le", 44100, {}, _harsh_blocks, "pcm_s24le"),
    ("c.wav", "pcm_f32le", 48000, {}, _harsh_blocks, "pcm_f32le"),
    ("d.flac", "flac", 48000, {}, _harsh_blocks, "flac"),
    ("e.m4a", "alac", 48000, {}, _harsh_blocks, "alac"),
    ("f.mp3", "libmp3lame", 48000, {"b": "32000"}, _harsh_blocks, "mp3float"),
    ("g.mp3", "libmp3lame", 22050, {"b": "24000"}, _vod_blocks, "mp3float"),
    ("h.ogg", "vorbis", 48000, {"strict": "-2", "global_quality": "0"}, _harsh_blocks, "vorbis"),
]


def test_every_decoder_allowed_to_seek_is_proven_below():
    assert {case[-1] for case in SEEKING} == SEEKS_EXACTLY


@pytest.mark.parametrize("name, encoder, rate, options, content, decoder", SEEKING)
def test_decoders_allowed_to_seek_restart_exactly(tmp_path, name, encoder, rate, options,
                                                  content, decoder):
    path = write_media(tmp_path / name, content(rate, 28), rate=rate, audio_codec=encoder,
                       audio_options=options)
    whole, restarts = _restarts(path, RESTART_AT)
    for start, (again, restarted) in zip(RESTART_AT, restarts):
        assert restarted.info.codec == decoder
        assert restarted.restarted_by == "seek"
        assert np.array_equal(again, whole[:, start:]), (name, start)


# Decoders whose state after a seek is not an uninterrupted decode's (why they are not in
# SEEKS_EXACTLY): each restarts exactly by decoding from the start.
FROM_THE_START = [
    ("a.mp4", "aac", {}, _harsh_blocks),  # noise substitution (on by default), at 128 kb/s
    ("b.mkv", "ac3", {"b": "96000"}, _harsh_blocks),  # dither
    ("c.mkv", "eac3", {"b": "64000"}, _harsh_blocks),
    ("d.ogg", "libopus", {"b": "12000", "application": "voip"}, _vod_blocks),  # SILK's filters
]


@pytest.mark.parametrize("name, encoder, options, content", FROM_THE_START)
def test_decoders_with_state_restart_exactly_from_the_start(tmp_path, monkeypatch, name, encoder,
                                                            options, content):
    path = write_media(tmp_path / name, content(48000, 28), rate=48000, audio_codec=encoder,
                       audio_options=options)
    whole, restarts = _restarts(path, RESTART_AT)
    codec = restarts[0][1].info.codec
    assert codec not in SEEKS_EXACTLY
    for start, (again, restarted) in zip(RESTART_AT, restarts):
        assert restarted.restarted_by == "skip"  # fed every packet, resampled from near start
        assert 0 < start - restarted.decoded_from < 12 * 44100
        assert np.array_equal(again, whole[:, start:]), (name, start)
    # Had it seeked, its samples would differ.
    monkeypatch.setattr(decode, "SEEKS_EXACTLY", SEEKS_EXACTLY | {codec})
    whole, seeked = _restarts(path, RESTART_AT)
    assert all(restarted.restarted_by == "seek" for _, restarted in seeked)
    assert not all(np.array_equal(again, whole[:, start:])
                   for start, (again, _) in zip(RESTART_AT, seeked))


def test_mel_features_resume_from_their_history():
    rng = np.random.default_rng(3)
    n = 44100 * 40
    stems = (rng.standard_normal((2, 2, n)) * 0.05).astype(np.float32)
    stems[..., 30 * 44100:31 * 44100] *= 8  # the loudest second comes late
    stems[..., 10 * 44100:11 * 44100] *= 4

    step, as_stems = 44100 // 3, audio(stems=STEMS)

    def run(op, start=0):
        return run_operator(op, stems[..., start:], step, start=start, make_chunk=as_stems)

    whole_op = MelFeatures()
    whole = run(whole_op)
    whole_frames = np.concatenate([c.frames for c in whole], axis=-1)
    interrupted = MelFeatures()  # stopped after the chunk that reaches ~25 s: history up to it
    end = (-(-25 * 44100 // step) + 1) * step
    run_operator(interrupted, stems[..., :end], step, make_chunk=as_stems, flush=False)
    for resume_frame in (0, 700, 1000):
        op = MelFeatures(emit_from=resume_frame)
        op.restore(interrupted.state())
        out = run(op, start=op.restart_sample(grid.frame_sample(resume_frame)))
        got = np.concatenate([c.frames for c in out], axis=-1)
        assert out[0].start == resume_frame
        # As equal as a restart makes them (the resampler's reach: see test_mel_features).
        np.testing.assert_allclose(got, whole_frames[..., resume_frame:], rtol=0, atol=1e-3)
        assert exact_from(op.state()) == exact_from(whole_op.state()) > 0
        np.testing.assert_allclose(op.reference_db, whole_op.reference_db, rtol=0, atol=1e-4)


# -- SIGKILL at random points, then resume, until the run completes ------------------------------

def _cli(*args):
    return [sys.executable, "-m", "highlightsense.engine.cli", *map(str, args)]


def _outputs(out_dir: Path):
    with open(out_dir / "raw_window_scores.csv", newline="") as f:
        scores = list(csv.reader(f))
    summary = json.loads((out_dir / "highlights.json").read_text())
    clips = {p.name: p.read_bytes() for p in sorted((out_dir / "clips").glob("highlight_*"))}
    rows = [{k: v for k, v in row.items() if k != "clip_path"} for row in summary["highlights"]]
    return scores, rows, clips, summary


def _record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _progress(data: dict) -> int:
    """How far a record is: windows kept over both passes (0 while there is none)."""
    if not data:
        return 0
    return len(data["windows"]) + len(data["rescored"]) + 1000 * (data["phase"] - 1)


def _kill_and_resume(command, out_dir: Path, kills_wanted: int, rng: random.Random,
                     when=None, timeout=300, delay=0.6):
    """Runs `command` and SIGKILLs it at a random moment (up to `delay` s) after its record has
    moved on since the last kill (and satisfies when[k] for the k-th kill, if given); again
    and again, then lets it finish. Returns the kills that landed on a running process."""
    record, kills, seen = out_dir / RECORD_NAME, 0, 0
    while kills < kills_wanted:
        ready = when[kills] if when else (lambda data: True)
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while child.poll() is None and not (_progress(_record(record)) > seen
                                            and ready(_record(record))):
            assert time.monotonic() < deadline, "no progress recorded"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, delay))
        if child.poll() is not None:  # it finished first
            assert child.returncode == 0, child.stderr.read().decode()
            return kills
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
        seen = _progress(_record(record))
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return kills


MOMENTS = [(60.0, 68.0), (200.0, 215.0), (400.0, 410.0), (520.0, 530.0)]


@pytest.fixture(scope="module")
def vod(tmp_path_factory):
    """Nine minutes of h264 + AAC at 48 kHz (the 44.1 kHz sample blocks taken as 48 kHz), with
    a hiss that makes the AAC encoder substitute noise (PNS, on by default) all along: its
    decoder draws that noise from a generator run since its first frame."""
    folder = tmp_path_factory.mktemp("vod")
    return write_media(folder / "vod.mp4", _hissy(SyntheticVod(600, seed=5, moments=MOMENTS)),
                       rate=48000, video=True, gop=20)


@pytest.fixture(scope="module")
def fast_records(tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "fast-records.yaml"
    config.write_text("progress_every_sec: 0.2\nthreshold_percentile: 90\n")
    return config


@pytest.fixture(scope="module")
def uninterrupted(vod, fast_records, tmp_path_factory):
    """The outputs of `detect` run on the VOD without interruption."""
    whole = tmp_path_factory.mktemp("whole")
    subprocess.run(_cli("detect", vod, "--out", whole, "--config", fast_records, "-q"),
                   check=True, timeout=300)
    return _outputs(whole)


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_result(
        vod, fast_records, uninterrupted, tmp_path):
    resumed = tmp_path / "resumed"
    command = _cli("detect", vod, "--out", resumed, "--config", fast_records, "-q")
    # Outside CI, HS_RESUME_KILLS=8 HS_RESUME_SEED=N kill it more often, at other moments.
    kills_wanted = int(os.environ.get("HS_RESUME_KILLS", "4"))
    rng = random.Random(int(os.environ.get("HS_RESUME_SEED", "11")))
    kills = _kill_and_resume(command, resumed, kills_wanted, rng)

    expected, got = uninterrupted, _outputs(resumed)
    assert got[0] == expected[0]  # every window's score, to the last digit
    assert got[1] == expected[1]  # the same highlights...
    assert got[2] == expected[2] and got[2]  # ...cut into the same clip files
    assert not (resumed / RECORD_NAME).exists()
    resumes = got[3].get("resumes", [])
    assert kills >= 2 and len(resumes) >= 2, (kills, resumes)
    for r in resumes:  # the loudness features' 61-block look-back and a block's alignment
        assert 0 <= r["warmup_sec"] <= 63.0, r
        assert r["decode_from_sec"] <= r["recorded_until_sec"]
    print(f"\n{kills} kills survived; resumes: {resumes}")


def test_two_sigkills_on_aac_with_noise_substitution_give_the_uninterrupted_scores(
        vod, fast_records, uninterrupted, tmp_path):
    """Killed twice while scoring, resumed each time (the second resume from sync points the
    first resumed run noted). AAC's noise substitution would decode other noise after a seek
    (the scores then moved by about 1e-6): a resume decodes the stream from its start again,
    resampling only from near the resume point, so every score is the uninterrupted run's."""
    resumed = tmp_path / "resumed"
    command = _cli("detect", vod, "--out", resumed, "--config", fast_records, "-q")
    in_first_pass = [lambda d: d["phase"] == 1] * 2
    assert _kill_and_resume(command, resumed, 2, random.Random(3), when=in_first_pass,
                            delay=0.15) == 2
    got = _outputs(resumed)
    resumes = got[3].get("resumes", [])
    assert [r["phase"] for r in resumes] == [1, 1], resumes
    assert resumes[1]["window"] > resumes[0]["window"]
    whole = np.array([float(r[3]) for r in uninterrupted[0][1:]])
    resumed_scores = np.array([float(r[3]) for r in got[0][1:]])
    np.testing.assert_allclose(resumed_scores, whole, rtol=0, atol=1e-5)
    assert got[0] == uninterrupted[0]  # in fact to the last digit
    assert got[1] == uninterrupted[1] and got[2] == uninterrupted[2]


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """A tiny HTDemucs and a small CRNN, written with the real classes (no trained weights)."""
    from highlightsense.benchmarks.bench_support import write_small_models

    return write_small_models(tmp_path_factory.mktemp("models"))


def test_sigkill_in_both_passes_of_the_model_path(small_models, tmp_path):
    """decode -> Demucs -> log-mel -> CRNN, killed in the first pass and in the second (the
    loudest moment comes late, so the windows before it are scored again)."""
    separator, checkpoint = small_models
    vod = SyntheticVod(150, seed=2, moments=[(20.0, 26.0), (110.0, 125.0)], music=[], bangs=[])
    # AAC with noise substitution, as a VOD's audio: decoded from the start on resuming.
    media = write_media(tmp_path / "vod.mkv", _hissy(vod), audio_codec="aac")
    config = tmp_path / "c.yaml"
    config.write_text("progress_every_sec: 0.2\nthreshold_percentile: 80\nbatch_size: 4\n")
    runs = {}
    for name, kills in (("whole", 0), ("resumed", 3)):
        command = _cli("detect", media, "--model", checkpoint, "--separator", separator,
                       "--device", "cpu", "--out", tmp_path / name, "--config", config, "-q")
        in_pass = [lambda d: d["phase"] == 1 and d["windows"],
                   lambda d: d["phase"] == 1 and len(d["windows"]) >= 12,
                   lambda d: d["phase"] == 2 and d["rescored"]]
        assert _kill_and_resume(command, tmp_path / name, kills, random.Random(5),
                                when=in_pass) == kills
        runs[name] = _outputs(tmp_path / name)
    resumes = runs["resumed"][3]["resumes"]
    assert {r["phase"] for r in resumes} == {1, 2}, resumes
    for r in resumes:  # Demucs's segments around the window, the features' 3 frames
        assert 0 <= r["warmup_sec"] <= 2 * 2.0 + 1.0, r
    whole = np.array([float(r[3]) for r in runs["whole"][0][1:]])
    resumed = np.array([float(r[3]) for r in runs["resumed"][0][1:]])
    # The decoded samples are the uninterrupted ones (noise substitution included); the
    # model path's later stages restart within 1e-5 (about 1e-8 here).
    np.testing.assert_allclose(resumed, whole, rtol=0, atol=1e-5)
    assert runs["resumed"][1] == runs["whole"][1] or np.allclose(
        [r["confidence"] for r in runs["resumed"][1]], [r["confidence"] for r in runs["whole"][1]])
    assert [r["start_sec"] for r in runs["resumed"][1]] == [r["start_sec"] for r in runs["whole"][1]]
    assert runs["resumed"][2] == runs["whole"][2]
    print(f"\nmodel path resumes: {resumes}")


def test_a_changed_input_or_setting_is_refused_or_restarted(vod, tmp_path, capsys):
    out = tmp_path / "out"
    record = out / RECORD_NAME
    out.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text("progress_every_sec: 0.2\n")
    child = subprocess.Popen(_cli("detect", vod, "--out", out, "--config", config, "-q"))
    deadline = time.monotonic() + 120
    while not record.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert record.exists()
    saved = record.read_bytes()

    code = main(["detect", str(vod), "--out", str(out), "--window-sec", "20", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0
    assert "different input or settings" in err and "window_sec" in err and "--restart" in err
    assert record.read_bytes() == saved  # refused: the saved progress is untouched

    code = main(["detect", str(vod), "--out", str(out), "--window-sec", "20", "--restart",
                 "--no-clips", "-q"])
    assert code == 0
    assert not record.exists()
    summary = json.loads((out / "highlights.json").read_text())
    assert summary["settings"]["window_sec"] == 20.0 and "resumes" not in summary


def test_ctrl_c_saves_progress_and_says_how_to_resume(vod, tmp_path):
    from processes import interruptible

    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text("progress_every_sec: 0.2\n")
    command = _cli("detect", vod, "--out", out, "--no-clips", "--config", config)
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                             preexec_fn=interruptible)
    deadline = time.monotonic() + 120
    while not _progress(_record(out / RECORD_NAME)) and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    began = time.monotonic()
    err = child.stderr.read()
    assert child.wait(timeout=30) == 130, err
    assert time.monotonic() - began < 10
    assert "progress saved" in err and "run the same command again" in err
    assert "Traceback" not in err
    data = json.loads((out / RECORD_NAME).read_text())
    assert data["phase"] == 1 and data["windows"]  # scores were kept
    assert not (out / "highlights.json").exists()
    done = subprocess.run(command + ["-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "highlights.json").read_text())["resumes"]


def test_max_duration_refuses_longer_input_in_one_line(vod, tmp_path, capsys):
    code = main(["detect", str(vod), "--out", str(tmp_path / "o"), "--max-duration", "5:00",
                 "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0
    assert "over --max-duration 5:00" in err and "raise the limit" in err
    assert not (tmp_path / "o" / "highlights.json").exists()


def test_a_stream_running_past_max_duration_stops_with_one_line(tmp_path):
    """A source whose length is not known up front (a live URL, a lying header) is cut off
    while streaming."""
    from highlightsense.operators.sources.wrappers import Limited
    from highlightsense.engine.errors import HighlightSenseError

    media = write_media(tmp_path / "a.wav", _noise_blocks(44100, 6))
    source = Limited(AudioDecoder(media), max_sec=4.0)
    seen = 0
    with pytest.raises(HighlightSenseError, match="runs past --max-duration 0:04"):
        for chunk in source:
            seen = chunk.end
    assert 3 * 44100 <= seen <= 4 * 44100
