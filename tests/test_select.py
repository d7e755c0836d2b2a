"""Selection against the seed's own code (copied as the reference) and a brute-force check."""
import numpy as np
import pytest

from highlightsense.benchmarks import seed_way
from highlightsense.engine import grid
from highlightsense.operators.select import WindowScore, apply_nms, select_highlights


# The seed notebook's apply_nms, as it is (kept with the seed's way of the whole job).
seed_apply_nms = seed_way.apply_nms


def seed_select(rows, percentile, nms_window, top_n):
    threshold = np.percentile([r[3] for r in rows], percentile)
    results = [r for r in rows if r[3] >= threshold]
    final = seed_apply_nms(results, nms_window)
    return threshold, sorted(final, key=lambda x: x[3], reverse=True)[:top_n]


def random_windows(rng, n, window_sec=30.0, stride_sec=5.0, decimals=None):
    wf, sf = grid.window_frames(window_sec), grid.stride_frames(stride_sec)
    scores = rng.random(n)
    if decimals is not None:
        scores = np.round(scores, decimals)  # ties, as sigmoid saturation makes them
    return [WindowScore(i, i * sf * grid.HOP / grid.FEATURE_RATE,
                        (i * sf + wf) * grid.HOP / grid.FEATURE_RATE, float(scores[i]), 0.0)
            for i in range(n)]


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_seed(seed):
    rng = np.random.default_rng(seed)
    window_sec = float(rng.choice([5.0, 10.0, 30.0]))
    windows = random_windows(rng, int(rng.integers(1, 400)), window_sec=window_sec,
                             stride_sec=float(rng.choice([1.0, 5.0])),
                             decimals=[None, 1, 2][seed % 3])
    percentile = float(rng.choice([0, 50, 75, 90, 99, 100]))
    nms_window, top_n = float(rng.choice([0.0, 3.0, 10.0, 40.0])), int(rng.integers(1, 30))
    rows = [[w.index, w.start_sec, w.end_sec, w.confidence] for w in windows]
    threshold, top = seed_select(rows, percentile, nms_window, top_n)
    sel = select_highlights(windows, percentile, nms_window, top_n)
    assert sel.threshold == threshold
    assert [w.index for w in sel.top] == [r[0] for r in top]


@pytest.mark.parametrize("seed", range(20))
def test_brute_force_properties(seed):
    rng = np.random.default_rng(100 + seed)
    windows = random_windows(rng, int(rng.integers(2, 200)), decimals=1)
    kept = apply_nms(windows, 10.0)
    by_start = [w.start_sec for w in kept]
    assert by_start == sorted(by_start)
    for a in kept:  # no two kept windows overlap or start within 10 s
        for b in kept:
            if a is not b:
                assert not (min(a.end_sec, b.end_sec) > max(a.start_sec, b.start_sec))
                assert abs(a.start_sec - b.start_sec) >= 10.0
    order = sorted(range(len(windows)), key=lambda i: -windows[i].confidence)
    rank = {windows[i].index: r for r, i in enumerate(order)}
    kept_ids = {w.index for w in kept}
    for w in windows:  # each dropped one is suppressed by a kept one ranked before it
        if w.index not in kept_ids:
            assert any(rank[k.index] < rank[w.index] and
                       (min(k.end_sec, w.end_sec) > max(k.start_sec, w.start_sec) or
                        abs(k.start_sec - w.start_sec) < 10.0) for k in kept)


def test_empty():
    sel = select_highlights([], 99, 10, 20)
    assert sel.top == [] and np.isnan(sel.threshold)
