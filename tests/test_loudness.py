import math

import numpy as np
import pytest

from harness import joined, run_operator
from highlightsense.benchmarks.loudness_recall import classify, recall_table, score_vod
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine import grid
from highlightsense.engine.chunks import AudioChunk, WindowBatch
from highlightsense.model.loudness import LoudnessScorer
from highlightsense.operators.loudness_features import (
    ALIGN_SAMPLES, FEATURES, LoudnessFeatures, loudness_features_offline, restart_sample)

RATE = grid.AUDIO_RATE
WIN = grid.window_frames(30.0)


def varied_audio(seconds, seed=0):
    """Stereo noise whose level jumps around: loud bursts, quiet stretches, digital silence;
    an odd number of samples so the last one pairs with a zero."""
    n = int(seconds * RATE) | 1
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    bursts = 6 * (np.sin(2 * np.pi * t / 37) > 0.85) + 3 * (np.sin(2 * np.pi * t / 5.3) > 0.9)
    level = 0.05 * (1 + bursts)
    level[(t > seconds * 0.3) & (t < seconds * 0.3 + 2)] = 0  # silence: the -100 dB floor
    return (rng.standard_normal((2, n)) * level).astype(np.float32)


def test_streaming_equals_offline_on_a_short_signal_one_sample_at_a_time():
    audio = varied_audio(3.0)
    reference = loudness_features_offline(audio)
    assert reference.shape == (len(FEATURES), grid.n_frames(audio.shape[1]))
    for chunk in (1, 1000, audio.shape[1]):
        out = run_operator(LoudnessFeatures(), audio, chunk)
        start, frames = out[0].start, joined(out)  # joined: contiguous
        assert start == 0
        np.testing.assert_array_equal(frames, reference)


@pytest.fixture(scope="module")
def long_audio():
    audio = varied_audio(150.0, seed=1)  # longer than two neighbourhoods: edges and middle
    return audio, loudness_features_offline(audio)


@pytest.mark.parametrize("chunk", [1000, 7919, 44111, 7 * RATE, 10 ** 9])
def test_streaming_equals_offline_for_any_chunking(long_audio, chunk):
    audio, reference = long_audio
    out = run_operator(LoudnessFeatures(), audio, chunk)
    start, frames = out[0].start, joined(out)  # joined: contiguous
    assert start == 0 and frames.dtype == np.float32
    # Same arithmetic on the same numbers: equal bit for bit, not just close.
    np.testing.assert_array_equal(frames, reference)


def test_feature_channels(long_audio):
    _, f = long_audio
    level, background, excess, sustained = (f[FEATURES.index(name)] for name in FEATURES)
    np.testing.assert_allclose(excess, level - background, atol=1e-4)
    assert level.min() == pytest.approx(-100.0)  # the silent stretch sits on the floor
    # the background is one value per 1-s block
    blocks = background[:len(background) // 43 * 43].reshape(-1, 43)
    assert (blocks == blocks[:, :1]).all()
    assert np.isfinite(f).all()


def test_memory_stays_bounded(long_audio):
    audio, _ = long_audio

    def bounded(op, chunk, out):
        assert op.held_frames < 3000  # ~2 neighbourhoods of 1-s blocks, never the whole stream

    run_operator(LoudnessFeatures(), audio, RATE, each=bounded, flush=False)


def test_restart_reproduces_the_stream_after_its_lookback(long_audio):
    audio, reference = long_audio
    t = int(100.3 * RATE)
    r = restart_sample(t)
    assert r % ALIGN_SAMPLES == 0 and 0 < t - r <= LoudnessFeatures.lookback_sec * RATE
    out = run_operator(LoudnessFeatures(), audio[:, r:], 10_000, start=r)
    start, frames = out[0].start, joined(out)  # joined: contiguous
    assert start == r // 1024
    first = math.ceil(t / 1024)  # the first frame centred at or after t
    np.testing.assert_array_equal(frames[:, first - start:], reference[:, first:])
    assert not np.array_equal(frames[:, 0], reference[:, start])  # the lookback is needed


def test_bad_streams_are_refused():
    op = LoudnessFeatures()
    with pytest.raises(ValueError):
        op.process(AudioChunk(np.zeros((2, 10), np.float32), 48000, 0))
    with pytest.raises(ValueError):
        LoudnessFeatures().process(AudioChunk(np.zeros((2, 10), np.float32), RATE, 1000))
    op = LoudnessFeatures()
    op.process(AudioChunk(np.zeros((2, 10), np.float32), RATE, 0))
    with pytest.raises(ValueError):
        op.process(AudioChunk(np.zeros((2, 10), np.float32), RATE, 11))
    assert LoudnessFeatures().flush() == []


# --- the scorer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene():
    """Six minutes: a moment at 60-70 s, a bang at 150 s, loud music from 200 s to the end."""
    vod = SyntheticVod(360, seed=3, moments=[(60.0, 70.0)], bangs=[(150.0, 150.2)],
                       music=[(200.0, 358.0)])
    op = LoudnessFeatures()
    chunks = []
    for i, block in enumerate(vod.blocks(10.0)):
        chunks += op.process(AudioChunk(block, RATE, i * 10 * RATE))
    chunks += op.flush()
    return np.concatenate([c.frames for c in chunks], axis=1)


def window_batch(frames, starts_sec, mask=None):
    starts = [int(s * grid.FEATURE_RATE / grid.HOP) for s in starts_sec]
    stack = np.stack([frames[:, s:s + WIN] for s in starts])
    return WindowBatch(index=np.arange(len(starts)), start_frame=np.array(starts),
                       end_frame=np.array(starts) + WIN, frames=stack,
                       mask=np.ones((len(starts), WIN), np.float32) if mask is None else mask)


def test_moment_beats_bang_music_and_background(scene):
    scorer = LoudnessScorer()
    moment, bang, music, bed = 50, 135, 260, 95
    scored = scorer.score(window_batch(scene, [moment, bang, music, bed]))
    c = scored.confidence
    assert c.dtype == np.float64 and ((c > 0) & (c < 1)).all()
    assert c[0] > 0.3
    assert c[0] > 5 * max(c[1], c[2], c[3])
    peak_sec = scored.peak_frame[0] * grid.HOP / grid.FEATURE_RATE
    assert 60 <= peak_sec <= 70


def test_mask_is_respected(scene):
    scorer = LoudnessScorer()
    real = 600
    garbage = window_batch(scene, [95])
    frames = garbage.frames.copy()
    frames[:, :, real:] = 80.0  # would score very high if counted
    mask = np.zeros((1, WIN), np.float32)
    mask[:, :real] = 1
    padded = frames.copy()
    padded[:, :, real:] = frames[:, :, :real].min()  # as the windows operator pads
    def score(frames, mask):
        return scorer.score(WindowBatch(garbage.index, garbage.start_frame, garbage.end_frame,
                                        frames, mask))

    a, b = score(frames, mask), score(padded, mask)
    counted = score(frames, np.ones((1, WIN), np.float32))
    assert a.confidence[0] == b.confidence[0] < 0.2 < counted.confidence[0]
    assert a.peak_frame[0] < garbage.start_frame[0] + real


def test_confidence_never_saturates():
    scorer = LoudnessScorer()
    frames = np.zeros((3, len(FEATURES), WIN), np.float32)
    frames[0] += 500.0
    frames[1] -= 500.0
    frames[2, :, ::2] = 30.0
    batch = WindowBatch(np.arange(3), np.zeros(3, int), np.full(3, WIN), frames,
                        np.ones((3, WIN), np.float32))
    c = scorer.score(batch).confidence
    assert c.dtype == np.float64 and ((c > 0) & (c < 1)).all()
    assert c[1] < c[2] < c[0]
    assert scorer.pad_frames == WIN and scorer.name == "loudness"
    [features] = scorer.feature_stages()
    assert isinstance(features, LoudnessFeatures)


def test_recall_on_a_five_minute_synthetic_vod():
    vod = SyntheticVod(300, seed=0)
    assert len(vod.moments) >= 2 and vod.music and vod.bangs
    start, end, confidence = score_vod(vod)
    assert len(start) == grid.num_windows(grid.n_frames(vod.n_samples), WIN, 215)
    # Every moment's best window outscores every window that touches no moment.
    best = [confidence[(start <= s) & (end >= e)].max() for s, e in vod.moments]
    others = [c for s, e, c in zip(start, end, confidence)
              if classify(s, e, vod) in ("music", "bang", "bed")]
    assert min(best) > max(others)
    (_, clips, recall, kinds), = recall_table(vod, start, end, confidence, percentiles=[75])
    assert recall >= 0.9
    assert kinds["music"] == kinds["bang"] == 0
