"""evaluate: each metric against a small example computed by hand, then the command on real
detect runs (the loudness scorer on a generated VOD) side by side."""
import json
import shutil

import pytest

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.cli import main
from highlightsense.engine.evaluate import (average_precision, figures, match_hits, precision_at,
                                            recall_at, RunResult)
from highlightsense.operators.sinks import tables


def test_precision_and_recall_at_k_by_hand():
    # Highlights best first; positive label centres 15, 20 and 300.
    # rank 1 (0, 30) holds 15 and 20: takes 15 (nearest its middle, 15) -> hit
    # rank 2 (100, 130) holds none -> miss; rank 3 (200, 230) none -> miss
    # rank 4 (10, 40) holds 20, still free -> hit (15 is taken: each label matches once)
    hits = match_hits([(0, 30), (100, 130), (200, 230), (10, 40)], [300, 20, 15])
    assert hits == [True, False, False, True]
    assert precision_at(hits, 1) == 1.0  # 1 / 1
    assert precision_at(hits, 5) == 2 / 5  # 2 hits over K = 5: the fifth, never chosen, misses
    assert precision_at(hits, 10) == 2 / 10
    assert recall_at(hits, 1, 3) == 1 / 3  # 1 of the 3 labels
    assert recall_at(hits, 5, 3) == 2 / 3
    assert recall_at(hits, 5, 0) is None
    # A second window over the same label cannot hit again.
    assert match_hits([(0, 30), (5, 35)], [15]) == [True, False]


def test_average_precision_by_hand():
    # Scores best first with labels 1 0 1 0 0, two positives:
    #   rank 1: precision 1/1, recall 1/2; rank 3: precision 2/3, recall 2/2
    #   AP = (1/2 - 0) * 1 + (1 - 1/2) * 2/3 = 0.5 + 0.3333 = 0.8333
    assert average_precision([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]) == pytest.approx(5 / 6)
    # Order does not matter, only scores: the same shuffled.
    assert average_precision([0.6, 0.7, 0.5, 0.9, 0.8], [0, 1, 0, 1, 0]) == pytest.approx(5 / 6)
    # Ties enter together: scores 0.9 0.9 0.5 with labels 0 1 1.
    #   threshold 0.9: 1 of 2 taken is positive: precision 1/2, recall 1/2
    #   threshold 0.5: precision 2/3, recall 1
    #   AP = 1/2 * 1/2 + 1/2 * 2/3 = 0.25 + 0.3333 = 0.5833
    assert average_precision([0.9, 0.9, 0.5], [0, 1, 1]) == pytest.approx(7 / 12)
    assert average_precision([0.3, 0.2], [0, 0]) is None  # no positive: undefined


def test_overall_figures_by_hand():
    # Two runs of one scorer, top-n 2: hits [1, 0] with 2 labels, hits [0] (one chosen) with 1.
    # P@1 = (1 + 0) / (1 * 2) = 0.5; P@2 = (1 + 0) / (2 * 2) = 0.25; R@2 = 1 / 3;
    # HIT@1 = mean(1, 0) = 0.5. AP pools the windows: scores 0.9 (1), 0.4 (0) | 0.8 (0), 0.7 (1)
    #   best first: 0.9 (1) P 1 R 1/2; 0.8 (0); 0.7 (1) P 2/3 R 1 -> AP = 1/2 + 1/2 * 2/3 = 5/6
    a = RunResult("a", "s", "va", 2, 2, [True, False], [0.9, 0.4], [1, 0])
    b = RunResult("b", "s", "vb", 2, 1, [False], [0.8, 0.7], [0, 1])
    f = figures([a, b])
    assert (f["p@1"], f["p@2"], f["r@2"], f["hit@1"]) == (0.5, 0.25, 1 / 3, 0.5)
    assert f["ap"] == pytest.approx(5 / 6)
    assert f["p@10"] == 1 / 20


MOMENTS = [(12.0, 20.0), (41.0, 49.0)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A real loudness run over a generated VOD with two moments, and a copy whose scores are
    turned upside down, recorded as another scorer's."""
    folder = tmp_path_factory.mktemp("eval")
    vod = SyntheticVod(60, seed=4, moments=MOMENTS, music=[], bangs=[])
    media = write_media(folder / "vod.m4a", vod.blocks())
    loud = folder / "loud"
    # 10-s windows: most do not touch a moment, so there are negatives to rank.
    assert main(["detect", str(media), "--out", str(loud), "--no-clips", "--top-n", "3",
                 "--window-sec", "10", "--nms-window", "5", "--threshold-percentile", "50",
                 "-q"]) == 0
    other = folder / "other"
    shutil.copytree(loud, other)
    windows = tables.read_scores(other)
    flipped = [w.__class__(w.index, w.start_sec, w.end_sec, 1 - w.confidence, w.peak_sec)
               for w in windows]
    tables.write_scores(other, flipped)
    summary = tables.read_summary(other)
    ranked = sorted(flipped, key=lambda w: -w.confidence)[:3]
    summary.update(scorer="crnn", model="x.pt",
                   highlights=[{"rank": i + 1, "start_sec": w.start_sec, "end_sec": w.end_sec}
                               for i, w in enumerate(ranked)])
    tables.write_summary(other, summary)
    labels = folder / "labels.csv"
    labels.write_text("source,start_sec,end_sec,label,note\n" + "".join(
        f"{media},{s},{e},1,\n" for s, e in MOMENTS))
    return media, loud, other, labels


def test_evaluate_runs_side_by_side(runs, tmp_path, capsys):
    media, loud, other, labels = runs
    png = tmp_path / "pr.png"
    assert main(["evaluate", str(loud), str(other), "--labels", str(labels), "--json",
                 "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["system"] for r in out["runs"]] == ["loudness", "crnn x.pt"]
    assert set(out["overall"]) == {"loudness", "crnn x.pt"}
    centres = [(s + e) / 2 for s, e in MOMENTS]
    for run_dir, figures_ in zip((loud, other), out["runs"]):
        summary = tables.read_summary(run_dir)
        ranked = sorted(summary["highlights"], key=lambda h: h["rank"])
        # Hits computed here from the rule: a highlight holds a label's centre.
        hits = [any(h["start_sec"] <= c < h["end_sec"] for c in centres) for h in ranked]
        assert figures_["p@3"] == pytest.approx(sum(hits[:3]) / 3)
        assert figures_["p@10"] == pytest.approx(sum(hits) / 10)
        assert figures_["hit@1"] == float(hits[0])
        assert figures_["positives"] == 2
    loud_f, other_f = out["runs"]
    assert loud_f["ap"] > other_f["ap"]  # the loudness scorer finds these moments; flipped not
    assert loud_f["p@1"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table names both scorers and the overall rows.
    assert main(["evaluate", str(loud), str(other), "--labels", str(labels)]) == 0
    text = capsys.readouterr().out
    assert text.count("overall") == 2 and "p@5" in text


def test_evaluate_errors_are_one_line(runs, tmp_path, capsys):
    media, loud, _, _ = runs
    past = tmp_path / "past.csv"
    past.write_text(f"source,start_sec,end_sec,label\n{media},80,200,1\n")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("source,start_sec,end_sec,label\nnot_this.mp4,1,2,1\n")
    for argv, says in [
        ([str(loud), "--labels", str(past)], "past.csv line 2: 80-200 s is past the end"),
        ([str(loud), "--labels", str(unknown)], "unknown.csv line 2: unknown source"),
        ([str(tmp_path), "--labels", str(past)], "holds no finished detect run"),
        ([str(loud)], "no labels given"),
    ]:
        assert main(["evaluate", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
