"""The original's train/inference mismatch, measured on the speech-mode task of train_bench.

    python -m highlightsense.benchmarks.train_mismatch --folder /tmp/tb   (after train_bench)

The original trained on per-clip features (n_fft 1024, hop 512, 80 mels, natural log
log(mel + 1e-9), each clip padded to 2584 frames with its minimum) and scored through
inference features (n_fft 2048, dB against the whole VOD's maximum). This trains the same small
CRNN, with the same recipe and seed as train_bench's, on the original's training features of the
same training VODs (each 30-s window cut from the separated stems as a clip of its own), then
scores the held-out VODs through our inference features, and prints evaluate's table beside
train_bench's model (trained and scored on ours). Figures, not a test.
"""
import argparse
import logging
import sys

import numpy as np


class KeepStems:
    """The separation's output, kept as librosa.load would give each stem: mono, 22,050 Hz."""

    name = "keep"
    threaded = True

    def __init__(self):
        import soxr

        from highlightsense.engine import grid

        self.stream = soxr.ResampleStream(grid.AUDIO_RATE, grid.FEATURE_RATE, 2,
                                          dtype="float32", quality="soxr_hq")
        self.parts = []

    def process(self, chunk):
        mono = np.mean(chunk.samples, axis=1, dtype=np.float32)  # (stems, n)
        self.parts.append(self.stream.resample_chunk(np.ascontiguousarray(mono.T)).T)
        return []

    def flush(self):
        self.parts.append(self.stream.resample_chunk(np.zeros((0, 2), np.float32), last=True).T)
        return []


def original_examples(media, labels, cfg, scorer):
    """The original's training clips of one VOD: per window, (features (2, 80, 2584), mask,
    label) by evaluate's rule."""
    import librosa

    from highlightsense.engine import grid
    from highlightsense.engine.labels import window_label
    from highlightsense.engine.passes import open_source
    from highlightsense.engine.pipeline import Pipeline, run_async

    keep = KeepStems()
    run_async(Pipeline(open_source(media, cfg), [scorer.feature_stages(cfg)[0], keep]).run())
    stems = np.concatenate(keep.parts, axis=1)
    frames = grid.n_frames(int(stems.shape[1] * 2))
    out = []
    for i in range(grid.num_windows(frames, cfg.window_frames, cfg.stride_frames)):
        a = i * cfg.stride_frames
        b = min(a + cfg.window_frames, frames)
        y = window_label(grid.frames_to_sec(a), grid.frames_to_sec(b), labels)
        if y is None:
            continue
        clip = stems[:, a * grid.HOP:(b - 1) * grid.HOP]
        mel = librosa.feature.melspectrogram(y=clip, sr=grid.FEATURE_RATE, n_fft=1024,
                                             hop_length=grid.HOP, n_mels=80)
        feat = np.log(mel + 1e-9).astype(np.float32)
        padded = np.full((2, 80, 2584), feat.min(), np.float32)
        n = min(feat.shape[-1], 2584)
        padded[..., :n] = feat[..., :n]
        mask = np.zeros(2584, np.float32)
        mask[:n] = 1
        out.append((padded, mask, y))
    return out


def main(argv=None) -> int:
    import torch

    from highlightsense.benchmarks.train_bench import held_out_runs, task, task_args
    from highlightsense.engine.evaluate import evaluate, table
    from highlightsense.engine.train import TrainOptions, new_model, save_checkpoint, split_by_vod
    from highlightsense.model.checkpoint import load_model
    from highlightsense.model.crnn_scorer import CrnnScorer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    task_args(p)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    folder, cfg, grouped, held = task(args)
    opts = TrainOptions(out=str(folder / "original.pt"), arch="small", epochs=args.epochs,
                        lr=args.lr, batch=args.batch, seed=0)
    model = new_model(opts, "cpu")
    scorer = CrnnScorer(new_model(opts, "cpu"), "cpu")
    # The same training VODs as train_bench's model (its one validation VOD left out).
    train_sources, _ = split_by_vod(list(grouped), 1 / args.train, 0)
    examples = [e for m in train_sources for e in original_examples(m, grouped[m], cfg, scorer)]
    print(f"{len(examples)} training clips with the original's features")
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(opts.epochs):
        rng = np.random.default_rng([opts.seed, epoch])
        torch.manual_seed(opts.seed * 1009 + epoch)
        model.train()
        order, losses = rng.permutation(len(examples)), []
        for a in range(0, len(examples), opts.batch):
            part = [examples[j] for j in order[a:a + opts.batch]]
            x = torch.from_numpy(np.stack([e[0] for e in part]))
            m = torch.from_numpy(np.stack([e[1] for e in part]))
            y = torch.tensor([float(e[2]) for e in part])
            loss = loss_fn(model(x, m)[0][:, 0], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}")
    save_checkpoint(opts.out, model, opts.epochs)

    runs = held_out_runs(folder, held, cfg, {
        "original-features": load_model(opts.out),
        "our-features-best": load_model(folder / "model.pt"),  # its best epoch (validation AP)
        "our-features-last": load_model(folder / "model.pt.work" / "last.pt")})  # as original's
    print(table(evaluate([str(r) for r in runs], [x for v in held.values() for x in v])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
