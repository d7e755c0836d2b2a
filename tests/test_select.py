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


@pytest.mark.parametrize("seed", range(10))
def test_nms_of_windows_of_any_length_matches_the_seed(seed):
    """apply_nms tests only the kept windows that start near a candidate: the seed's answer
    still, for windows of mixed lengths (down to none), shared starts and tied scores."""
    rng = np.random.default_rng(500 + seed)
    n = int(rng.integers(1, 300))
    starts = np.where(rng.random(n) < 0.5, rng.integers(0, 60, n) * 5.0, rng.uniform(0, 300, n))
    lengths = rng.choice([0.0, 2.5, 30.0, 45.0], n)
    scores = np.round(rng.random(n), 1)
    windows = [WindowScore(i, float(a), float(a + d), float(c), float(a))
               for i, (a, d, c) in enumerate(zip(starts, lengths, scores))]
    for nms_window in (0.0, 3.0, 10.0, 40.0):
        seed_kept = seed_apply_nms([[w.index, w.start_sec, w.end_sec, w.confidence]
                                    for w in windows], nms_window)
        assert [w.index for w in apply_nms(windows, nms_window)] == [r[0] for r in seed_kept]


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


# ---- the summary a person reads, and the plot ---------------------------------------------------

def _config(**settings):
    from highlightsense.engine.config import Config

    return Config(**settings)


def test_fewer_than_top_n_says_which_percentile_gives_more():
    from highlightsense.engine.selection import choose, summary

    windows = random_windows(np.random.default_rng(4), 720)  # an hour: room for 20 apart
    cfg = _config()
    selection = choose(windows, cfg)
    assert len(selection.top) < 20  # 8 windows at the 99th percentile, fewer after NMS
    lines = summary(windows, selection, cfg)
    note = next(line for line in lines if "--threshold-percentile" in line)
    assert "fewer than --top-n 20" in note
    suggested = float(note.split("--threshold-percentile ")[1].split()[0])
    # What it suggests gives 20, and one percentile point stricter would not.
    assert len(choose(windows, _config(threshold_percentile=suggested)).top) == 20
    assert len(choose(windows, _config(threshold_percentile=suggested + 1)).top) < 20
    assert not any("at most" in line for line in lines)


def test_an_absolute_threshold_gets_the_threshold_that_gives_more():
    from highlightsense.engine.selection import choose, summary

    windows = random_windows(np.random.default_rng(5), 720)
    cfg = _config(threshold=0.995)
    lines = summary(windows, choose(windows, cfg), cfg)
    note = next(line for line in lines if "--threshold " in line)
    suggested = float(note.split("--threshold ")[1].split()[0])
    assert len(choose(windows, _config(threshold=suggested)).top) == 20
    assert len(choose(windows, _config(threshold=suggested + 0.02)).top) < 20


def test_a_short_input_says_the_most_it_can_give():
    from highlightsense.engine.selection import choose, summary

    windows = random_windows(np.random.default_rng(6), 55)  # under 5 minutes
    cfg = _config(threshold_percentile=0)
    selection = choose(windows, cfg)
    lines = summary(windows, selection, cfg)
    most = len(selection.top)  # every window a candidate: what NMS leaves is the most
    assert most < 20
    assert any(f"holds at most {most} separate windows at --nms-window 10" in line
               for line in lines), lines
    # At the default percentile it says both: the most, and the percentile that gives it.
    lines = summary(windows, choose(windows, _config()), _config())
    assert any("at most" in line for line in lines)
    assert any(f"gives {most}" in line for line in lines), lines


def test_the_plot_keeps_its_legend_off_the_data_and_marks_the_clip_files():
    from highlightsense.engine.selection import choose
    from highlightsense.operators.sinks.plot import scores_figure

    windows = random_windows(np.random.default_rng(7), 120)
    selection = choose(windows, _config(threshold_percentile=90))
    spans = [(w.start_sec - 1.5, w.end_sec) for w in selection.top]  # keyframes before
    fig = scores_figure(windows, selection, "vod.mp4", spans, "90th percentile")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    axes_box, legend_box = ax.get_window_extent(), legend.get_window_extent()
    assert legend_box.x0 >= axes_box.x1  # beside the axes, over no score
    labels = [t.get_text() for t in legend.get_texts()]
    assert f"threshold {selection.threshold:.4f} (90th percentile)" in labels
    assert "clip files" in labels
    bands = list(ax.patches)  # a Polygon before matplotlib 3.9, a Rectangle since
    assert len(bands) == len(spans)
    for band, (start, end) in zip(bands, spans):
        xs = band.get_patch_transform().transform(band.get_path().vertices)[:, 0]
        assert min(xs) == pytest.approx(start / 60) and max(xs) == pytest.approx(end / 60)
