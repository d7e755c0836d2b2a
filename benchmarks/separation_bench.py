"""Separation benchmark: the streaming operator against the seed's way, and its memory.

    python -m highlightsense.benchmarks.separation_bench [--seconds 120] [--rss-minutes 10 60]

1. Fidelity: the operator against apply_model on the whole signal, small model, and what the
   CLI's whole-track normalisation (which a stream cannot do) would change.
2. Speed: the full-size htdemucs shape (HTDemucs, 41,984,456 parameters, random weights: no
   trained weights here) on the same input file, by the operator (decoder -> separate, nothing
   on disk; in this thread, then in the engine's pipeline) and by the seed's way
   (benchmarks.seed_separation: 60 s WAV chunks, one `python -m demucs` process per chunk).
   Prints each one's x realtime and their ratios.
3. Memory: peak RSS of a 10-minute and a 60-minute stream (synthetic source -> separate, in the
   pipeline, or alone with --rss-direct) with a small HTDemucs (real 7.8 s segments), each in
   its own child process.
"""
import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.seed_separation import seed_separate
from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.memory import tune_malloc
from highlightsense.engine.operator import Operator, Source
from highlightsense.engine.pipeline import Pipeline
from highlightsense.model.separator import save_package
from highlightsense.operators.separate import Separate

RATE = 44100
SOURCES = ["drums", "bass", "other", "vocals"]


def full_size_htdemucs(seed=0) -> HTDemucs:
    """The pretrained htdemucs's architecture (its parameter count), random weights."""
    torch.manual_seed(seed)
    return HTDemucs(SOURCES, segment=Fraction(39, 5), dconv_mode=3, bottom_channels=512).eval()


def small_htdemucs(seed=0) -> HTDemucs:
    torch.manual_seed(seed)
    return HTDemucs(SOURCES, segment=Fraction(39, 5), channels=4, depth=4, t_layers=1,
                    t_heads=1, dconv_comp=2).eval()


def synthetic_block(start: int, n: int, seed: int = 0) -> np.ndarray:
    """Stereo noise under a slow envelope plus a tone, the same for the same samples."""
    t = np.arange(start, start + n) / RATE
    rng = np.random.default_rng([seed, start])
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.05 * t) ** 2
    tone = 0.2 * np.sin(2 * np.pi * 220 * t)
    return (rng.standard_normal((2, n)) * 0.1 * envelope + tone).astype(np.float32)


class Synthetic(Source):
    name = "synthetic"

    def __init__(self, seconds: float, chunk_sec: float = 1.0):
        self.total, self.step = int(seconds * RATE), int(chunk_sec * RATE)

    def __iter__(self):
        for i in range(0, self.total, self.step):
            yield AudioChunk(synthetic_block(i, min(self.step, self.total - i)), RATE, i)


class Keep(Operator):
    """The pipeline's end: counts samples, keeps them only when asked."""

    name = "sink"
    threaded = False

    def __init__(self, keep: bool):
        self.keep, self.chunks, self.samples = keep, [], 0

    def process(self, chunk):
        self.samples += chunk.samples.shape[-1]
        if self.keep:
            self.chunks.append(chunk.samples)
        return []


def cpu_sec(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def write_bytes() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("write_bytes")).split()[1])


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) / 1024


def peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: that one survives exec, so a child started from a big
    # parent would report the parent's pages.
    return _status_mb("VmHWM")


def rss_now_mb() -> float:
    return _status_mb("VmRSS")


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    n = min(reference.shape[-1], other.shape[-1])
    ref, err = reference[..., :n].astype(np.float64), (other[..., :n] - reference[..., :n])
    return 10 * np.log10((ref ** 2).sum() / max((err.astype(np.float64) ** 2).sum(), 1e-30))


def speed(seconds: float, batch_size: int, device, threads: int) -> None:
    model = full_size_htdemucs()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="sepbench-") as tmp:
        tmp = Path(tmp)
        input_wav = write_media(tmp / "input.wav", (synthetic_block(i, min(RATE, int(
            seconds * RATE) - i)) for i in range(0, int(seconds * RATE), RATE)))
        (tmp / "repo").mkdir()
        save_package(model, tmp / "repo" / "bench.th")
        print(f"input: {seconds:.0f} s of synthetic stereo at 44.1 kHz ({input_wav.name}); "
              f"model: HTDemucs full-size shape, {params:,} parameters, random weights, "
              f"segment {float(model.segment)} s; torch threads {threads}")

        # The direct run goes first, with glibc's own malloc settings; the pipeline run then
        # has the CLI's (engine.memory), which last for the rest of the process.
        runs = {}
        for how in ("direct", "pipeline"):
            if how == "pipeline":
                tune_malloc(separating=True)
            op = Separate(model, device=device, batch_size=batch_size)
            written, cpu = write_bytes(), cpu_sec(resource.RUSAGE_SELF)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            began = time.perf_counter()
            ours = separate_file(op, input_wav, pipeline=how == "pipeline")
            wall = time.perf_counter() - began
            written, cpu = write_bytes() - written, cpu_sec(resource.RUSAGE_SELF) - cpu
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            runs[how] = wall, cpu
            where = ("in this thread, decoder then operator, glibc's malloc defaults"
                     if how == "direct" else "in the engine's pipeline, malloc set as the CLI")
            print(f"operator   : {wall:7.1f} s wall, {seconds / wall:5.2f}x realtime, {cpu:.1f} "
                  f"CPU s, {faults:,} page faults ({where}; device {op.device}, batch "
                  f"{batch_size}); {written:,} bytes written to disk (/proc/self/io); process "
                  f"peak RSS {peak_rss_mb():.0f} MB")

        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        cpu = cpu_sec(resource.RUSAGE_SELF) + cpu_sec(resource.RUSAGE_CHILDREN)
        seed = seed_separate(input_wav, tmp / "repo", "bench", tmp / "seed", device="cpu",
                             env=env)
        seed_cpu = cpu_sec(resource.RUSAGE_SELF) + cpu_sec(resource.RUSAGE_CHILDREN) - cpu
        print(f"seed's way : {seed.wall_sec:7.1f} s wall, {seconds / seed.wall_sec:5.2f}x "
              f"realtime ({seed.chunks} demucs processes, device cpu); {seed_cpu:.1f} CPU s; "
              f"{seed.bytes_written:,} bytes written to disk (WAV files); "
              f"peak RSS of a demucs process {seed.peak_rss_mb:.0f} MB")
        for how, (wall, cpu) in runs.items():
            print(f"ratio      : operator ({how}) is {seed.wall_sec / wall:.2f}x the seed's speed "
                  f"(x realtime {seconds / wall:.2f} / {seconds / seed.wall_sec:.2f}); by CPU "
                  f"time, which other load on the machine moves less: {seed_cpu / cpu:.2f}x")
        print(f"outputs    : {ours.shape[-1]} vs {seed.stems.shape[-1]} samples; seed vs operator "
              f"SNR voice {snr_db(ours[0], seed.stems[0]):.1f} dB, game "
              f"{snr_db(ours[1], seed.stems[1]):.1f} dB (the seed's random shift, 60 s cuts and "
              f"16-bit WAVs move every segment; random weights make that count)")


def separate_file(op: Separate, path, pipeline: bool) -> np.ndarray:
    """Decode `path` and separate it, through the pipeline or in this thread; the stems."""
    from highlightsense.operators.sources.decode import AudioDecoder

    sink = Keep(keep=True)
    run_stream(AudioDecoder(path), op, sink, pipeline)
    return np.concatenate(sink.chunks, axis=-1)


def run_stream(source, op: Separate, sink: Keep, pipeline: bool) -> None:
    if pipeline:
        asyncio.run(Pipeline(source, [op, sink]).run())
        return
    for chunk in source:  # without the pipeline's threads
        for out in op.process(chunk):
            sink.process(out)
    for out in op.flush():
        sink.process(out)


def rss_child(minutes: float, threads: int, direct: bool) -> None:
    """One stream through synthetic source -> separate -> sink; print peak RSS as JSON."""
    if not direct:
        tune_malloc(separating=True)  # as the CLI runs the pipeline
    torch.set_num_threads(threads)
    op = Separate(small_htdemucs(), device="cpu")
    before = rss_now_mb()
    sink = Keep(keep=False)
    began = time.perf_counter()
    run_stream(Synthetic(minutes * 60), op, sink, pipeline=not direct)
    print(json.dumps({"minutes": minutes, "samples": sink.samples, "rss_before_mb": before,
                      "peak_rss_mb": peak_rss_mb(), "wall_sec": time.perf_counter() - began}),
          flush=True)
    # Leave without interpreter teardown: with one torch thread, a torch thread pool has
    # aborted the exit now and then after a pipeline run ("terminate called without an
    # active exception"), after the figures above were complete.
    os._exit(0)


def memory(minutes_list, threads: int, direct: bool) -> None:
    results = []
    how = "operator alone in one thread" if direct else "in the pipeline"
    for minutes in minutes_list:
        command = [sys.executable, "-m", "highlightsense.benchmarks.separation_bench",
                   "--rss-child", str(minutes), "--threads", str(threads)]
        done = subprocess.run(command + (["--rss-direct"] if direct else []),
                              capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        assert r["samples"] == int(minutes * 60 * RATE)
        results.append(r)
        print(f"memory     : {minutes:g}-minute stream, small HTDemucs (segment 7.8 s), {how}: "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (RSS {r['rss_before_mb']:.0f} MB before "
              f"streaming), {minutes * 60 / r['wall_sec']:.1f}x realtime")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"memory     : {b['minutes']:g} min / {a['minutes']:g} min peak RSS = "
              f"{b['peak_rss_mb'] / a['peak_rss_mb']:.3f}")


def fidelity() -> None:
    model = small_htdemucs()
    seconds = 95.3
    x = synthetic_block(0, int(seconds * RATE), seed=1)
    with torch.no_grad():
        ref = apply_model(model, torch.from_numpy(x)[None], shifts=0, split=True,
                          overlap=0.25)[0]
    voice, game = ref[3].numpy(), (torch.zeros_like(ref[0]) + ref[0] + ref[1] + ref[2]).numpy()
    # What the CLI (demucs.api.Separator) adds: the whole track's mean and std taken out first.
    mix = torch.from_numpy(x)
    mean, std = mix.mean(0).mean(), mix.mean(0).std() + 1e-8
    with torch.no_grad():
        cli = apply_model(model, ((mix - mean) / std)[None], shifts=0, split=True,
                          overlap=0.25)[0] * std + mean
    print(f"fidelity   : whole-track normalisation (the CLI's, which a stream cannot know) moves "
          f"the sources by at most {(cli - ref).abs().max().item():.3g} "
          f"(max |source| {ref.abs().max().item():.3g}; track std {std.item():.3g})")
    for chunk_sec, batch in ((1.0, 1), (4.4, 4)):
        op, outs = Separate(model, device="cpu", batch_size=batch), []
        step = int(chunk_sec * RATE)
        for i in range(0, x.shape[-1], step):
            outs += op.process(AudioChunk(x[:, i:i + step], RATE, i))
        got = np.concatenate([c.samples for c in outs + op.flush()], axis=-1)
        diff = max(np.abs(got[0] - voice).max(), np.abs(got[1] - game).max())
        print(f"fidelity   : {seconds} s, chunks {chunk_sec} s, batch {batch}: max |operator - "
              f"apply_model| = {diff:.3g} (max |output| {np.abs(got).max():.3g})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="separation_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="input length for speed")
    parser.add_argument("--rss-minutes", type=float, nargs="*", default=[10, 60])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--rss-direct", action="store_true",
                        help="memory runs without the pipeline (and its malloc setting)")
    parser.add_argument("--rss-child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child is not None:
        return rss_child(args.rss_child, args.threads, args.rss_direct)
    torch.set_num_threads(args.threads)
    print(f"machine    : {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
          f"torch {torch.__version__}")
    if not args.skip_fidelity:
        fidelity()
    if not args.skip_speed:
        speed(args.seconds, args.batch_size, args.device, args.threads)
    if args.rss_minutes:
        memory(args.rss_minutes, args.threads, args.rss_direct)
    print(f"machine    : load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
