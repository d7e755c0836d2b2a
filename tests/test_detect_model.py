"""`detect --model`: decode -> Demucs -> log-mel -> windows -> CRNN, end to end on generated media,
with a small separator and a small CRNN that the test writes with the real classes."""
import csv

import numpy as np
import pytest

from highlightsense.benchmarks.bench_support import write_small_models
from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.cli import main
from highlightsense.engine.config import load_config
from highlightsense.engine.operator import FeatureRun
from highlightsense.engine.passes import build_scorer, run_pipeline
from highlightsense.engine.second_pass import exact_from
from highlightsense.operators.sources.decode import AudioDecoder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    # The loudest moment comes late, so the running dB reference rises late: the windows
    # before it need the second pass.
    vod = SyntheticVod(75, seed=2, moments=[(20.0, 26.0), (60.0, 70.0)], music=[], bangs=[])
    media = write_media(folder / "vod.m4a", vod.blocks())
    return (media, *write_small_models(folder))


def scores(out_dir):
    with open(out_dir / "raw_window_scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return (np.array([float(r["confidence"]) for r in rows]),
            np.array([float(r["peak_sec"]) for r in rows]),
            [(float(r["start_sec"]), float(r["end_sec"])) for r in rows])


@pytest.fixture(scope="module")
def reference(files):
    """A single pass (what --single-pass gives), then the reference: a pass whose features know
    the VOD's final maximum from the start. The same for every case below: computed once."""
    media, separator, checkpoint = files
    cfg = load_config(overrides={"model": str(checkpoint), "separator": str(separator),
                                 "device": "cpu"})
    scorer = build_scorer(cfg)
    first = scorer.feature_stages(cfg)
    one, _ = run_pipeline(AudioDecoder(str(media)), first, scorer, cfg)
    assert exact_from(first[1].state()) > 0  # the loudest frame came after the first window
    known = scorer.feature_stages(cfg, FeatureRun(reference_db=first[1].reference_db))
    expected, _ = run_pipeline(AudioDecoder(str(media)), known, scorer, cfg)
    return (np.array([w.confidence for w in one]), np.array([w.confidence for w in expected]))


# The second pass from the levels the first held (all of them), by separating again (none
# held), and from both (1 MB holds 38 s: two windows, the rest separated again).
@pytest.mark.parametrize("cache_mb, batch, says", [
    (64, 4, ["10 windows scored again from the levels kept"]),
    (0, 4, ["second pass over 0:00 to"]),
    (1, 1, ["2 windows scored again from the levels kept", "second pass over 0:0"]),
])
def test_detect_with_model_scores_with_the_whole_vods_reference(files, reference, tmp_path,
                                                                capsys, cache_mb, batch, says):
    media, separator, checkpoint = files
    config = tmp_path / "cache.yaml"
    config.write_text(f"rescore_cache_mb: {cache_mb}\n")
    code = main(["detect", str(media), "--model", str(checkpoint), "--separator", str(separator),
                 "--device", "cpu", "--batch-size", str(batch), "--out", str(tmp_path / "out"),
                 "--config", str(config)])
    assert code == 0
    err = capsys.readouterr().err
    assert all(text in err for text in says), err
    two, peaks, spans = scores(tmp_path / "out")

    one, expected = reference
    assert len(two) == len(expected) == len(one)
    np.testing.assert_allclose(two, expected, rtol=0, atol=1e-6)
    assert np.abs(one - expected).max() > 1e-6  # the second pass changed something
    assert all(start <= peak < end for peak, (start, end) in zip(peaks, spans))
    assert (tmp_path / "out" / "highlights.json").exists()


def test_unavailable_separator_is_one_line(files, tmp_path, capsys, monkeypatch):
    media, _, checkpoint = files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["detect", str(media), "--model", str(checkpoint), "--separator", "htdemucs",
                 "--device", "cpu", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert "htdemucs" in err
    assert not (tmp_path / "o" / "highlights.json").exists()
