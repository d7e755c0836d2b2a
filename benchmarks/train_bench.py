"""Training on synthetic VODs the loudness scorer cannot read, measured.

    python -m highlightsense.benchmarks.train_bench --folder /tmp/tb [--train 6 --held-out 3
        --minutes 2 --epochs 8 --lr 1e-3 --arch small]

Makes speech-mode VODs (benchmarks.synth: excited speech over a steady loud game at constant
loudness, loud music as distractors) and a tiny random HTDemucs (the tests' separator), then:
1. trains a CRNN on the first VODs (validation: one of them, held out whole), printing each
   epoch's loss, validation AP and P@5, and the training throughput, epoch 1 (separating every
   VOD) against epoch 2 (from the levels in memory), and a rerun's epoch 1 from --cache;
2. scores the held-out VODs with the trained model, the same network untrained, and the
   loudness scorer, writes each as a run folder as detect does, and prints evaluate's table.
Figures, not a test: it stays out of CI.
"""
import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path


def make_vods(folder: Path, count: int, minutes: float, first_seed: int):
    from highlightsense.benchmarks.media import write_media
    from highlightsense.benchmarks.synth import SyntheticVod
    from highlightsense.engine.labels import make_label

    grouped = {}
    for seed in range(first_seed, first_seed + count):
        vod = SyntheticVod(minutes * 60, seed=seed, mode="speech")
        path = folder / f"speech_{seed}.m4a"
        if not path.exists():
            write_media(path, vod.blocks())
        grouped[str(path)] = [make_label(str(path), s, e, 1, where=f"{path.name} moment {i}")
                              for i, (s, e) in enumerate(vod.moments)]
    return grouped


def crnn_windows(model, vod, cfg):
    from highlightsense.engine.train import window_batch
    from highlightsense.model.crnn_scorer import CrnnScorer
    from highlightsense.operators.select import window_scores

    scorer = CrnnScorer(model.eval(), "cpu", batch_size=16)
    out = []
    for a in range(0, len(vod.windows), 16):
        out += window_scores(scorer.score(window_batch(vod, range(a, min(a + 16,
                                                                         len(vod.windows))),
                                                       cfg)))
    return out


def held_out_runs(folder: Path, held, cfg, models):
    """Each held-out VOD scored by each of `models` ({name: CRNN}) on train's windows of it
    (detect's features: the cache holds detect's own levels), written as run folders."""
    from highlightsense.benchmarks.bench_support import write_finished_run
    from highlightsense.engine.train import LevelCache, prepare
    from highlightsense.model.crnn_scorer import CrnnScorer

    scorer = CrnnScorer(next(iter(models.values())), "cpu")
    cache = LevelCache(folder / "cache", 20)
    runs = []
    for media, labels in held.items():
        vod = prepare(media, labels, cfg, scorer, cache, "all")
        for name, model in models.items():
            runs.append(write_finished_run(folder / "runs" / f"{Path(media).stem}_{name}",
                                           crnn_windows(model, vod, cfg), cfg, source=media,
                                           scorer="crnn", model=name))
    return runs


def task_args(p: argparse.ArgumentParser) -> None:
    """The task and the recipe, the same for train_bench and train_mismatch."""
    p.add_argument("--folder", required=True)
    p.add_argument("--train", type=int, default=6)
    p.add_argument("--held-out", type=int, default=3)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threshold-percentile", type=float, default=0.0,
                   help="selection on the held-out VODs (default 0: NMS and top-n alone, so "
                        "P@5 has five highlights to count)")


def task(args):
    """(folder, cfg, training VODs, held-out VODs) of the arguments task_args declares."""
    from highlightsense.benchmarks.bench_support import write_random_separator
    from highlightsense.engine.config import load_config

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    separator = write_random_separator(folder / "separator", "tiny")
    cfg = load_config(overrides={"separator": str(separator), "device": "cpu",
                                 "threshold_percentile": args.threshold_percentile})
    return (folder, cfg, make_vods(folder, args.train, args.minutes, 0),
            make_vods(folder, args.held_out, args.minutes, 1000))


def main(argv=None) -> int:
    import torch

    from highlightsense.engine.train import TrainOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    task_args(p)
    p.add_argument("--arch", default="small")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true",
                   help="measure the --folder's model.pt again without training")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    folder, cfg, grouped, held = task(args)
    opts = TrainOptions(out=str(folder / "model.pt"), arch=args.arch, epochs=args.epochs,
                        lr=args.lr, batch=args.batch, val_fraction=1 / args.train,
                        cache=str(folder / "cache"), restart=True)
    if not args.reuse:
        measure_training(folder, grouped, cfg, opts)
    evaluate_held_out(folder, held, cfg, opts)
    return 0


def measure_training(folder, grouped, cfg, opts):
    from highlightsense.engine.train import train

    # The throughput with nothing cached: epoch 1 separates every VOD.
    for old in (folder / "cache").glob("*.npy"):
        old.unlink()
    began = time.perf_counter()
    result = train(grouped, cfg, opts)
    print(f"\ntrained in {time.perf_counter() - began:.0f} s; best epoch {result.best_epoch}, "
          f"validation AP {result.best_ap}")
    h = result.history
    print("throughput: epoch 1 %.1f s (separating %.1f s, training %.2f windows/s), "
          "epoch 2 %.1f s (separating %.2f s, training %.2f windows/s)" % (
              h[0]["seconds"], h[0]["separate_sec"], h[0]["windows_per_sec"],
              h[1]["seconds"], h[1]["separate_sec"], h[1]["windows_per_sec"]))
    again = train(grouped, cfg, replace(opts, epochs=1, out=str(folder / "again.pt"),
                                        work=str(folder / "again.work")))
    print("a rerun's epoch 1 from --cache: %.1f s (separating %.2f s)" % (
        again.history[0]["seconds"], again.history[0]["separate_sec"]))


def evaluate_held_out(folder, held, cfg, opts):
    from highlightsense.engine.config import load_config
    from highlightsense.engine.detect import detect
    from highlightsense.engine.evaluate import evaluate, plot_pr, table
    from highlightsense.engine.train import new_model
    from highlightsense.model.checkpoint import load_model

    # Held-out VODs: trained, untrained, loudness; each as a run folder, measured by evaluate.
    models = {"trained": load_model(opts.out)}  # the best epoch by validation AP
    last = opts.work_dir / "last.pt"
    if last.is_file():
        models["trained-last"] = load_model(last)  # the last epoch
    models["untrained"] = new_model(replace(opts, init=None), "cpu")  # the same init
    runs = held_out_runs(folder, held, cfg, models)
    for media in held:
        loud = folder / "runs" / f"{Path(media).stem}_loudness"
        detect(media, loud, replace(load_config(), clips=False,
                                    threshold_percentile=cfg.threshold_percentile),
               show_progress=False, restart=True)
        runs.append(loud)
    labels = [lab for labs in held.values() for lab in labs]
    print()
    results = evaluate([str(r) for r in runs], labels)
    print(table(results))
    print(f"precision-recall curves: {plot_pr(results, folder / 'pr.png')}")


if __name__ == "__main__":
    sys.exit(main())
