"""CRNN throughput: windows per second scored one at a time (as the seed's loop) against batched,
in one run, with the full-size seed model (random weights: speed does not depend on them).

    python -m highlightsense.benchmarks.crnn_throughput [--windows 32] [--batch-size 16]
                                                         [--device cpu] [--rounds 2] [--threads N]

The two ways alternate round by round, so a machine busy with other work slows both alike.
"""
import argparse
import time

import numpy as np
import torch

from highlightsense.engine import grid
from highlightsense.engine.chunks import WindowBatch
from highlightsense.model.crnn import HighlightSenseModel
from highlightsense.model.crnn_scorer import CrnnScorer


def make_windows(n: int, seed: int = 0) -> WindowBatch:
    """n windows of 30 s (1292 frames) padded to 2583 with their minimum, in dB-like values."""
    rng = np.random.default_rng(seed)
    real = grid.window_frames(30)
    frames = np.empty((n, 2, 80, grid.PADDED_FRAMES), np.float32)
    frames[..., :real] = rng.uniform(-80, 0, size=(n, 2, 80, real))
    frames[..., real:] = frames[..., :real].min(axis=(1, 2, 3), keepdims=True)[..., 0:1]
    mask = np.zeros((n, grid.PADDED_FRAMES), np.float32)
    mask[:, :real] = 1
    start = np.arange(n) * grid.stride_frames(5)
    return WindowBatch(np.arange(n), start, start + real, frames, mask)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=32, help="windows per round (default 32)")
    ap.add_argument("--batch-size", type=int, default=16, help="batched size (default 16)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each way (default 2)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = HighlightSenseModel()  # the seed's sizes: 32-64-128-256 convs, 2x256 GRU
    windows = make_windows(args.windows)
    ways = {"one at a time": CrnnScorer(model, device, batch_size=1),
            f"batched ({args.batch_size})": CrnnScorer(model, device, batch_size=args.batch_size)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"CRNN throughput: full-size seed model (random weights), {name}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.windows} windows of {grid.PADDED_FRAMES} frames ({windows.mask[0].sum():.0f} "
          f"real) per round, {args.rounds} rounds of each way, alternating")

    for scorer in ways.values():  # warm-up: allocator, kernels, caches
        scorer.score(make_windows(min(args.batch_size, args.windows), seed=1))
        sync(device)
    spent = {way: 0.0 for way in ways}
    for _ in range(args.rounds):
        for way, scorer in ways.items():
            began = time.perf_counter()
            scorer.score(windows)
            sync(device)
            spent[way] += time.perf_counter() - began

    rates = {}
    for way, sec in spent.items():
        n = args.windows * args.rounds
        rates[way] = n / sec
        print(f"  {way:14s} {n} windows in {sec:6.2f} s = {rates[way]:7.2f} windows/s "
              f"({1000 * sec / n:.0f} ms per window)")
    one, batched = rates.values()
    print(f"  batched / one at a time: {batched / one:.2f}x")


if __name__ == "__main__":
    main()
