"""Time shards of one long input (engine.shards): the shards' merged windows equal one run's,
bit for bit on the loudness path and within 1e-5 on the model path, with 2 and 5 shards, shard
edges on and off the window grid; the sync-point pass notes the decoder's own points; the held
levels of any span equal the whole signal's."""
import json
import logging
import os
import pickle
from dataclasses import replace

import numpy as np
import pytest

from harness import audio, run_operator
from highlightsense.benchmarks.bench_support import write_small_models
from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine import grid
from highlightsense.engine.cli import main
from highlightsense.engine.config import load_config
from highlightsense.engine.detect import detect
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.passes import build_scorer, run_pipeline
from highlightsense.engine.second_pass import HeldLevels
from highlightsense.engine.shards import (ShardRunner, merge, plan_shards, score_sharded,
                                          whole_reference)
from highlightsense.operators.mel_features import MelFeatures, mel_levels_offline
from highlightsense.operators.sinks import tables
from highlightsense.operators.sources.decode import AudioDecoder

STRIDE_SEC = grid.frames_to_sec(grid.stride_frames(5.0))  # 4.992 s: the window grid's step
# 10-s windows, so that shards (a window long at least) are short and the media too.
WINDOW_SEC = 10.0


def on_grid(strides: int) -> float:
    """Shard minutes whose span is exactly `strides` window steps: an edge on the window grid."""
    return strides * STRIDE_SEC / 60


def edges(plan):
    return [(s.first_window, s.stop_window) for s in plan.shards]


# ---- the loudness path: identical ---------------------------------------------------------------

@pytest.fixture(scope="module")
def vod(tmp_path_factory):
    """73 s of h264 + AAC at 48 kHz (resampled; AAC restarts by decoding from the start)."""
    folder = tmp_path_factory.mktemp("shards")
    blocks = SyntheticVod(80, seed=4, moments=[(20.0, 24.0), (55.0, 62.0)]).blocks()
    return str(write_media(folder / "vod.mp4", blocks, rate=48000, video=True))


@pytest.fixture(scope="module")
def loudness_single(vod):
    """One run's windows (the first pass: on the loudness path the only one)."""
    cfg = load_config(overrides={"batch_size": 1, "window_sec": WINDOW_SEC})
    scorer = build_scorer(cfg)
    windows, metrics = run_pipeline(AudioDecoder(vod), scorer.feature_stages(cfg), scorer, cfg)
    return windows, metrics


@pytest.mark.parametrize("minutes, batch, expected", [
    # 8 window steps a shard: window 8's first frame is the second span's first frame.
    (on_grid(8), 1, [(0, 8), (8, None)]),
    # 12-s spans (2.4 steps), edges moved to whole batches of 2 windows.
    (0.2, 2, [(0, 4), (4, 6), (6, 8), (8, 10), (10, None)]),
])
def test_loudness_shards_equal_a_single_run(vod, loudness_single, minutes, batch, expected):
    single, metrics = loudness_single
    cfg = load_config(overrides={"batch_size": batch, "window_sec": WINDOW_SEC})
    scorer = build_scorer(cfg)
    plan = plan_shards(vod, cfg, minutes)
    assert edges(plan) == expected
    runner = ShardRunner(scorer)
    # What worker processes send and get back: every piece pickled on the way.
    plan = pickle.loads(pickle.dumps(plan))
    results = [pickle.loads(pickle.dumps(runner.map(plan, cfg, s.index))) for s in plan.shards]
    assert whole_reference(results) is None  # loudness needs no reduce
    windows, info = merge(plan, results)
    assert windows == single  # every field of every window, to the last bit
    assert info["duration_sec"] == metrics.position_sec == plan.duration_sec
    assert info["has_video"] and info["corrupt_packets"] == 0
    # What detect records of the run, as an unsharded detect's (engine.detect.run_info).
    assert info["source"] == os.path.abspath(vod) and info["scorer"] == "loudness"
    assert [s["stop_window"] for s in info["shards"]] == [b for _, b in expected]
    # Each shard began its warm-up (the loudness background's minute) before its first window.
    for shard, result in zip(plan.shards[1:], results[1:]):
        start_sec = shard.first_window * STRIDE_SEC
        assert 0 < start_sec - result.info["decode_from_sec"] <= 63.0


# ---- the model path: within 1e-5 -------------------------------------------------------------

@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """55 s of audio whose loudest moment comes late (the running reference rises late), a
    tiny HTDemucs and a small CRNN with random weights: 10 windows."""
    folder = tmp_path_factory.mktemp("model")
    vod = SyntheticVod(55, seed=2, moments=[(12.0, 16.0), (40.0, 46.0)], music=[], bangs=[])
    media = write_media(folder / "vod.m4a", vod.blocks())
    separator, checkpoint = write_small_models(folder)
    cfg = load_config(overrides={"model": str(checkpoint), "separator": str(separator),
                                 "device": "cpu", "window_sec": WINDOW_SEC, "clips": False})
    return str(media), cfg, build_scorer(cfg)


@pytest.fixture(scope="module")
def model_single(model_files, tmp_path_factory):
    """An unsharded detect's windows: first pass, then the second from the held levels."""
    media, cfg, _ = model_files
    return detect(media, tmp_path_factory.mktemp("single") / "out", cfg,
                  show_progress=False).windows


def assert_model_windows_equal(got, expected):
    assert [(w.index, w.start_sec, w.end_sec, w.peak_sec) for w in got] == \
        [(w.index, w.start_sec, w.end_sec, w.peak_sec) for w in expected]
    np.testing.assert_allclose([w.confidence for w in got], [w.confidence for w in expected],
                               rtol=0, atol=1e-5)


def test_model_shards_reduced_by_the_runner_that_held_them_or_another_equal_a_single_run(
        model_files, model_single, caplog, one_torch_thread):
    """Two shards, the edge on the window grid. Shard 0 is longer than its runner may hold
    (1 MB: 38 s of levels), so its reduce scores the first windows from the held levels and
    separates the rest again; shard 1 is reduced by a runner that did not map it (a restarted
    worker), which separates it again under the whole VOD's reference."""
    media, cfg, scorer = model_files
    cfg = replace(cfg, rescore_cache_mb=1)
    plan = plan_shards(media, replace(cfg, batch_size=scorer.batch_size), on_grid(8))
    assert edges(plan) == [(0, 8), (8, None)]
    mapper, other = ShardRunner(scorer), ShardRunner(scorer)
    results = [mapper.map(pickle.loads(pickle.dumps(plan)), cfg, i) for i in (0, 1)]
    assert all(r.windows == [] and len(r.level_max) == 2 for r in results)
    # Shard 0 read up to its last window's end and Demucs's look-ahead (3 s here), no further.
    assert results[0].info["position_sec"] < 8 * STRIDE_SEC + 10 + 4 < plan.duration_sec
    # Shard 0 up to the 1 MB cap, shard 1 all its frames.
    assert mapper.held_bytes == HeldLevels.within(1).nbytes + HeldLevels(
        2, 80, plan.facts.frames - 8 * cfg.stride_frames).nbytes
    reference = whole_reference(results)
    assert reference == [max(a, b) for a, b in zip(*(r.level_max for r in results))]
    with caplog.at_level(logging.INFO, logger="highlightsense"):
        rescored = {0: mapper.reduce(pickle.loads(pickle.dumps(plan)), cfg, 0, reference),
                    1: other.reduce(plan, cfg, 1, reference)}
    assert "windows 6 to 7 decoded again under the whole VOD's reference (past the " \
           "levels held)" in caplog.text
    assert "windows 8 to 9 decoded again under the whole VOD's reference (no levels " \
           "held here)" in caplog.text
    # Reduce frees what it used; what another runner reduced is dropped with release().
    assert mapper.held_bytes == HeldLevels(2, 80, plan.facts.frames - 8 * cfg.stride_frames).nbytes
    mapper.release(pickle.loads(pickle.dumps(plan)))
    assert mapper.held_bytes == 0
    windows, info = merge(plan, results, rescored)
    assert_model_windows_equal(windows, model_single)
    with pytest.raises(ValueError, match="needs its reduce"):
        merge(plan, results)


def test_five_model_shards_off_the_grid_equal_a_single_run(model_files, model_single,
                                                            one_torch_thread):
    media, cfg, scorer = model_files
    windows, info = score_sharded(media, cfg, scorer, 10 / 60)  # 10 s: 2.003 window steps
    assert [(s["first_window"], s["stop_window"]) for s in info["shards"]] == \
        [(0, 3), (3, 5), (5, 7), (7, 9), (9, None)]
    assert len(windows) == 10
    assert_model_windows_equal(windows, model_single)


# ---- the sync-point pass ------------------------------------------------------------------------

def _blocks(rate, seconds, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(seconds):
        t = np.arange(rate) / rate + i
        x = 0.3 * np.sin(2 * np.pi * (220 + 13 * i) * t) + 0.05 * rng.standard_normal(rate)
        yield np.stack([x, 0.5 * x]).astype(np.float32)


@pytest.mark.parametrize("name, rate, extra", [
    ("a.mp4", 48000, {"video": True}),  # AAC with an edit list, resampled
    ("b.mkv", 48000, {}),  # whole-millisecond timestamps
    ("c.wav", 44100, {}),  # PCM: a restart seeks
    ("d.wav", 48000, {}),
])
def test_the_sync_point_pass_notes_the_decoders_own_points(tmp_path, name, rate, extra):
    path = str(write_media(tmp_path / name, _blocks(rate, 24), rate=rate, **extra))
    decoder = AudioDecoder(path)
    whole = np.concatenate([c.samples for c in decoder], axis=1)
    plan = plan_shards(path, load_config(), 0.5)
    assert plan.sync_points == tuple(decoder.info.sync_points) and len(plan.sync_points) >= 4
    assert plan.facts.samples == whole.shape[1]
    assert plan.facts.origin_sec == decoder.info.origin_sec
    # A shard's decoder restarts from them as a resumed run does: the very same samples.
    start = 15 * 44100 + 321
    again = AudioDecoder(path, start_sample=start, sync_points=plan.sync_points)
    samples = np.concatenate([c.samples for c in again], axis=1)
    assert again.restarted_by in ("seek", "skip") and again.decoded_from > 0
    assert np.array_equal(samples, whole[:, start:])


# ---- bad input ----------------------------------------------------------------------------------

def test_shards_need_a_local_file_and_a_shard_of_a_window_or_more(vod, tmp_path, capsys):
    with pytest.raises(HighlightSenseError, match="needs a local media file.*is a URL"):
        plan_shards("http://127.0.0.1:9/vod.m3u8", load_config(), 1.0)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(HighlightSenseError, match="is a pipe"):
        plan_shards(str(fifo), load_config(), 1.0)
    for args, says in ((["http://127.0.0.1:9/vod.m3u8", "--shard-minutes", "1"], "is a URL"),
                       ([vod, "--shard-minutes", "0"], "'shard_minutes' = 0.0 must be at least "
                                                       "one window long"),
                       ([vod, "--shard-minutes", "-2"], "'shard_minutes' = -2.0 must be"),
                       ([vod, "--shard-minutes", "0.25"], "'shard_minutes' = 0.25 must be"),
                       ([vod, "--shard-minutes", "0.1", "--window-sec", "10"], "= 0.1 must be")):
        out = tmp_path / "out"
        assert main(["detect", *args, "--out", str(out), "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
        assert not out.exists()
    with pytest.raises(HighlightSenseError, match="'shard_minutes' = 0.0 must be at least one"):
        plan_shards(vod, load_config(), 0.0)
    assert plan_shards(vod, load_config(), 0.5).shards  # half a minute: one 30-s window


def test_single_pass_cannot_be_sharded(model_files):
    media, cfg, scorer = model_files
    with pytest.raises(HighlightSenseError, match="drop --single-pass"):
        score_sharded(media, replace(cfg, exact_reference=False), scorer, 0.5)


# ---- detect --shard-minutes ------------------------------------------------------------------

def test_detect_with_shard_minutes_writes_the_tables_of_an_unsharded_detect(vod, tmp_path):
    runs = {}
    for name, extra in (("single", []), ("sharded", ["--shard-minutes", "0.5"])):
        out = tmp_path / name
        assert main(["detect", vod, "--out", str(out), "--no-clips", "-q", "--window-sec", "10",
                     "--batch-size", "4", "--threshold-percentile", "80", *extra]) == 0
        summary = json.loads((out / tables.SUMMARY_JSON).read_text())
        runs[name] = ((out / tables.SCORES_CSV).read_bytes(),
                      (out / "final_clips_metadata.csv").read_bytes(), summary)
    (scores, clips, summary), (s_scores, s_clips, s_summary) = runs["single"], runs["sharded"]
    assert s_scores == scores and s_clips == clips
    # 30-s spans (6.01 window steps), edges on whole batches of 4 windows.
    assert [s["stop_window"] for s in s_summary.pop("shards")] == [8, 12, None]
    summary.pop("wall_sec"), s_summary.pop("wall_sec")
    assert s_summary == summary and summary["highlights"]


# ---- held levels: a span from any frame, streaming == whole signal ----------------------------

@pytest.mark.parametrize("start, capacity, emit_from, chunks", [
    (0, 10 ** 4, 0, [7919]),  # the second pass's: from frame 0, every frame
    (40, 60, 0, [1, 4096, 333]),  # a span inside the stream
    (150, 10 ** 4, 120, [44100 // 3]),  # a shard's, restarted before its first frame
    (100, 30, 120, [1023, 1025]),  # a span that begins before the first frame emitted
])
def test_held_levels_of_any_span_equal_the_whole_signals(start, capacity, emit_from, chunks):
    rng = np.random.default_rng(start)
    n = 6 * 44100
    envelope = np.where(np.arange(n) % 30000 < 9000, 1.0, 0.02)
    stems = (0.1 * rng.standard_normal((2, 2, n)) * envelope).astype(np.float32)
    held = HeldLevels(2, 80, capacity, start)
    features = MelFeatures(emit_from=emit_from, hold=held)
    begin = features.restart_sample(grid.frame_sample(emit_from))
    run_operator(features, stems[..., begin:], chunks, start=begin,
                 make_chunk=audio(stems=("voice", "game")))
    whole = mel_levels_offline(stems).numpy()
    span = range(max(start, emit_from), min(start + capacity, whole.shape[-1]))
    assert held.frames == span and held.offered == whole.shape[-1]
    # A restart's frames equal to what the resampler's reach allows (see test_mel_features).
    np.testing.assert_allclose(held.get(span.start, span.stop), whole[..., span.start:span.stop],
                               rtol=0, atol=1e-4 if emit_from == 0 else 1e-3)
