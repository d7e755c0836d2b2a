"""train: examples through detect's own stages, the checkpoint format, resume, the levels cache.

Generated speech-mode VODs (benchmarks.synth), the tiny random HTDemucs and small CRNNs written
with the real classes; 10-s windows so that a VOD of 25 s gives four of them."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from highlightsense.benchmarks.bench_support import write_random_crnn, write_random_separator
from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine import train as training
from highlightsense.engine.cli import main
from highlightsense.engine.config import load_config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.labels import make_label
from highlightsense.engine.train import LevelCache, TrainOptions, prepare, train, window_batch
from highlightsense.model.checkpoint import load_model
from highlightsense.model.crnn_scorer import CrnnScorer
from highlightsense.operators.sinks import tables

WINDOW = {"window_sec": 10.0, "stride_sec": 5.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_torch_thread):
    """Two 25-s speech VODs (one to train on, one held out) with their moments as labels, a tiny separator, a small CRNN to
    fine-tune, and a first training run (2 epochs) that fills the cache, separating each VOD."""
    folder = tmp_path_factory.mktemp("train")
    separator = write_random_separator(folder / "sep", "tiny")
    tiny = write_random_crnn(folder / "tiny.pt", "small")
    grouped = {}
    for seed in range(2):
        moment = (6.0 + 2 * seed, 14.0 + 2 * seed)
        vod = SyntheticVod(25, seed=seed, mode="speech", moments=[moment], music=[])
        media = str(write_media(folder / f"v{seed}.m4a", vod.blocks()))
        grouped[media] = [make_label(media, *moment, 1, where=f"v{seed} moment")]
    cfg = load_config(overrides={"separator": str(separator), "device": "cpu", **WINDOW})
    cache = str(folder / "cache")
    separated = []
    real = training.separated_levels
    training.separated_levels = lambda *a: separated.append(a[0]) or real(*a)
    try:
        first = train(grouped, cfg, TrainOptions(out=str(folder / "first.pt"), init=str(tiny),
                                                 epochs=2, lr=1e-3, batch=4, cache=cache,
                                                 cache_gb=1))
    finally:
        training.separated_levels = real
    return folder, separator, tiny, grouped, cfg, cache, first, separated


def options(data, name, **kw):
    folder, _, tiny, _, _, cache = data[:6]
    return TrainOptions(out=str(folder / f"{name}.pt"), init=str(tiny), epochs=2, lr=1e-3,
                        batch=4, cache=cache, cache_gb=1, restart=True, **kw)


def test_first_epoch_separates_and_the_second_does_not(data):
    folder, _, _, grouped, _, cache, first, separated = data
    assert sorted(separated) == sorted(grouped)  # each VOD once, all in epoch 1
    one, two = first.history
    assert one["separate_sec"] > 0.5 and two["separate_sec"] < 0.05
    assert len(list((folder / "cache").glob("*.npy"))) == 2


def test_full_size_training_scores_in_detect_as_on_trains_windows(data, tmp_path):
    """--arch full trains the seed's network: its checkpoint loads strictly into the notebook's
    model class (a copy in tests/test_crnn.py), and detect --model gives the scores it gives
    train's own windows: train and detect share their features by construction."""
    from test_crnn import SeedModel

    folder, separator, _, grouped, cfg, cache = data[:6]
    media = sorted(grouped)[0]
    out = tmp_path / "full.pt"
    cfg = replace(cfg, window_sec=20.0)  # two windows: the full-size CRNN is slow on a CPU
    train({media: grouped[media]}, cfg, TrainOptions(out=str(out), arch="full", epochs=1,
                                                     batch=2, cache=cache, restart=True))
    saved = torch.load(out, weights_only=False)  # as the notebook loads it
    assert set(saved) == {"model", "epochs"} and saved["epochs"] == 1
    SeedModel().load_state_dict(saved["model"], strict=True)
    assert main(["detect", media, "--model", str(out), "--separator", str(separator),
                 "--device", "cpu", "--window-sec", "20", "--stride-sec", "5", "--no-clips",
                 "--out", str(tmp_path / "run"), "-q"]) == 0
    detected = tables.read_scores(tmp_path / "run")
    scorer = CrnnScorer(load_model(out), "cpu")
    vod = prepare(media, grouped[media], cfg, scorer, LevelCache(cache, 1), "all")
    scored = scorer.score(window_batch(vod, range(len(vod.windows)), cfg))
    assert [w[1:] for w in vod.windows] == [(w.start_sec, w.end_sec) for w in detected]
    np.testing.assert_allclose(scored.confidence, [w.confidence for w in detected],
                               rtol=0, atol=1e-6)
    assert np.ptp(scored.confidence) > 1e-6  # the windows differ: a real comparison


def test_checkpoint_format_resume_and_cache(data, monkeypatch):
    folder, _, _, grouped, cfg, cache = data[:6]
    calls = []
    real = training.separated_levels
    monkeypatch.setattr(training, "separated_levels",
                        lambda *a: calls.append(a[0]) or real(*a))
    seen = []
    whole = train(grouped, cfg, options(data, "whole"), on_epoch=seen.append)
    assert calls == []  # every VOD's levels came from the cache: nothing separated
    assert [f["epoch"] for f in seen] == [1, 2] and all(f["loss"] > 0 for f in seen)
    assert all(f["val_ap"] is not None for f in seen)  # one VOD held out whole

    # Interrupted after its first epoch, then run again: it resumes and ends as the whole run.
    def stop(figures):
        if figures["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(grouped, cfg, options(data, "resumed"), on_epoch=stop)
    resumed = train(grouped, cfg, replace(options(data, "resumed"), restart=False))
    assert [f["epoch"] for f in resumed.history] == [1, 2]
    a = torch.load(folder / "whole.pt.work" / "last.pt", weights_only=True)["model"]
    b = torch.load(folder / "resumed.pt.work" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in
               torch.load(data[2], weights_only=True)["model"].items())  # it did learn

    # --out: the notebook's format, the best epoch, loaded back through our loader.
    saved = torch.load(whole.out, weights_only=True)
    assert set(saved) == {"model", "epochs"} and saved["epochs"] == whole.best_epoch
    load_model(whole.out)

    # Fine-tuning must not overwrite the checkpoint it starts from.
    with pytest.raises(HighlightSenseError, match="would overwrite --init"):
        train(grouped, cfg, replace(options(data, "x"), out=data[2]))

    # Another VOD set in the same work folder is refused in one line.
    with pytest.raises(HighlightSenseError, match="other labels or settings; pass --restart"):
        train(dict(list(grouped.items())[:1]), cfg, replace(options(data, "whole"),
                                                            restart=False))


def training_loss(model_path, vods, cfg):
    """BCE of a checkpoint over the labelled windows of `vods`, in eval mode."""
    model = load_model(model_path)
    losses = []
    for vod in vods:
        keep = [i for i, y in enumerate(vod.ys) if y is not None]
        batch = window_batch(vod, keep, cfg)
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(batch.frames), torch.from_numpy(batch.mask))
        y = torch.tensor([float(vod.ys[i]) for i in keep])
        losses.append(torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y))
    return float(torch.stack(losses).mean())


def test_a_few_steps_fit_the_training_windows(data):
    """The short, deterministic CI stand-in for benchmarks/train_bench.py (where a small CRNN
    trained a few minutes beats the untrained one on held-out VODs): a few seeded steps lower
    the loss on the training windows well below the starting checkpoint's."""
    folder, _, tiny, grouped, cfg, cache = data[:6]
    opts = replace(options(data, "fit"), epochs=3, lr=1e-2, val_fraction=0)
    train(grouped, cfg, opts)
    scorer = CrnnScorer(load_model(tiny), "cpu")
    vods = [prepare(m, grouped[m], cfg, scorer, LevelCache(cache, 1), "all") for m in grouped]
    before, after = training_loss(tiny, vods, cfg), training_loss(opts.out, vods, cfg)
    assert after < 0.8 * before, (before, after)


def test_level_cache_keeps_within_its_bound(tmp_path):
    cache = LevelCache(tmp_path / "c", max_gb=1.5 * 80 * 1000 * 2 * 4 / 2 ** 30)  # 1.5 entries
    one, two = (np.full((2, 80, 1000), v, np.float32) for v in (1, 2))
    cache.put("a", one)
    np.testing.assert_array_equal(cache.get("a"), one)
    cache.put("b", two)  # no room for both: the least recently used goes
    assert cache.get("a") is None
    np.testing.assert_array_equal(cache.get("b"), two)


def test_train_errors_are_one_line(data, tmp_path, capsys):
    folder, separator, _, grouped = data[:4]
    url = tmp_path / "url.csv"
    url.write_text("source,start_sec,end_sec,label\nhttps://twitch.tv/videos/1,1,5,1\n")
    past = tmp_path / "past.csv"
    media = sorted(grouped)[0]
    past.write_text(f"source,start_sec,end_sec,label\n{media},30,90,1\n")
    base = ["train", "--separator", str(separator), "--device", "cpu", "--cache",
            data[5], "--out", str(tmp_path / "m.pt"), "-q"]
    for argv, says in [
        (["--labels", str(url)], "url.csv line 2: https://twitch.tv/videos/1 is not a media file"),
        (["--labels", str(past)], "past.csv line 2: 30-90 s is past the end"),
        (["--twitch-clips", str(url)], "--twitch-clips and --source go together"),
        ([], "no labels given"),
    ]:
        assert main(base + argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.pt").exists()
