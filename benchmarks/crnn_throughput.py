"""CRNN throughput: windows per second scored one at a time (as the seed's loop) against batched,
in one run, with the full-size seed model (random weights: speed does not depend on them).

    python -m highlightsense.benchmarks.crnn_throughput [--windows 32] [--batch-size 16 [64 ...]]
                                                         [--device cpu] [--rounds 2] [--threads N]
                                                         [--json-out FILE]

The ways (one at a time, then each --batch-size) alternate round by round, so a machine busy
with other work slows all alike. Each round hands the scorer host arrays, as the pipeline does,
so the copy to the device is counted.
"""
import argparse
import time

import numpy as np
import torch

from highlightsense.benchmarks.bench_support import CRNN_SIZES, crnn_config
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
    ap.add_argument("--batch-size", type=int, nargs="+", default=[16],
                    help="batched sizes to measure (default 16)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each way (default 2)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json-out", help="also write {batch size: windows/s} here")
    ap.add_argument("--size", choices=CRNN_SIZES, default="full",
                    help="the seed's full-size model (default) or the tests' small one")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    # full: the seed's sizes (32-64-128-256 convs, 2x256 GRU)
    model = HighlightSenseModel.from_config(crnn_config(args.size))
    windows = make_windows(args.windows)
    sizes = [1] + [b for b in args.batch_size if b != 1]
    ways = {size: CrnnScorer(model, device, batch_size=size) for size in sizes}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"CRNN throughput: {args.size}-size seed model (random weights), {name}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.windows} windows of {grid.PADDED_FRAMES} frames ({windows.mask[0].sum():.0f} "
          f"real) per round, {args.rounds} rounds of each way, alternating")

    for size, scorer in ways.items():  # warm-up: allocator, kernels, caches
        scorer.score(make_windows(min(size, args.windows), seed=1))
        sync(device)
    spent = {way: 0.0 for way in ways}
    for _ in range(args.rounds):
        for way, scorer in ways.items():
            began = time.perf_counter()
            scorer.score(windows)
            sync(device)
            spent[way] += time.perf_counter() - began

    rates = {}
    for size, sec in spent.items():
        n = args.windows * args.rounds
        rates[size] = n / sec
        way = "one at a time" if size == 1 else f"batched ({size})"
        print(f"  {way:14s} {n} windows in {sec:6.2f} s = {rates[size]:8.2f} windows/s "
              f"({1000 * sec / n:.1f} ms per window; {rates[size] / rates[1]:.2f}x one at a "
              f"time)")
    if args.json_out:
        import json

        with open(args.json_out, "w") as f:
            json.dump({"device": name, "size": args.size, "windows": args.windows, "rounds": args.rounds,
                       "windows_per_sec": {str(k): v for k, v in rates.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
