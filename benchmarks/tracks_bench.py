"""The recording's own tracks against Demucs: x realtime of `detect --model` on the same file, with
--voice-track/--game-track and with Demucs separating, each with and without --single-pass; and
how far the CRNN's scores move between Demucs stems and the true stems of the same mix.

    python -m highlightsense.benchmarks.tracks_bench --minutes 10            # full-size models
    python -m highlightsense.benchmarks.tracks_bench --minutes 1 --size small --skip-demucs
    python -m highlightsense.benchmarks.tracks_bench --compare-stems        # the score shift

The input is a synthetic 3-track recording as OBS keeps it (mix = voice + game, then the
microphone, then the game), AAC in Matroska, written by write_tracks below; the models have
random weights (benchmarks.bench_support), full-size by default. Each run is a fresh process
(`highlightsense detect`), timed from start to exit.
"""
import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence

import av
import numpy as np

RATE = 44100
BLOCK = RATE  # samples rendered at a time: each block's noise has its own seed


class TrackedStream:
    """A synthetic stream's voice and game, kept apart: voice is a syllable-modulated harmonic
    that turns to loud, high shouting in the `moments`; game a noise bed with explosions there.
    Each stays within +-0.5, so their sum (the mix) is never clipped.
    Any (a, b) range renders the same samples (noise is seeded per BLOCK)."""

    def __init__(self, seconds: float, moments: Sequence[tuple] = (), seed: int = 0):
        self.n = int(round(seconds * RATE))
        self.moments, self.seed = list(moments), seed

    def stems(self, a: int, b: int) -> tuple:
        """(voice, game), float32 (2, b - a) each."""
        t = np.arange(a, b) / RATE
        loud = np.zeros(b - a)
        for s, e in self.moments:
            loud = np.maximum(loud, ((t >= s) & (t < e)).astype(float))
        pitch = 140 + 160 * loud
        syllable = 0.5 + 0.5 * np.sin(2 * np.pi * (4 + 3 * loud) * t)
        phase = 2 * np.pi * np.cumsum(pitch) / RATE + 2 * np.pi * a * 140 / RATE
        voice = (0.04 + 0.36 * loud) * syllable * (np.sin(phase) + 0.5 * np.sin(2 * phase)
                                                   + 0.25 * np.sin(3 * phase))
        noise = np.concatenate([np.random.default_rng([self.seed, k]).standard_normal(BLOCK)
                                for k in range(a // BLOCK, (b - 1) // BLOCK + 1)])
        noise = noise[a % BLOCK:a % BLOCK + (b - a)]
        game = (0.03 + 0.15 * loud) * noise + 0.05 * np.sin(2 * np.pi * 55 * t)
        return tuple(np.clip(np.stack([x, 0.8 * x]), -0.5, 0.5).astype(np.float32)
                     for x in (voice, game))

    def blocks(self, which: str) -> Iterator[np.ndarray]:
        """Blocks of "voice", "game" or "mix" (their sum)."""
        for a in range(0, self.n, BLOCK):
            voice, game = self.stems(a, min(a + BLOCK, self.n))
            yield {"voice": voice, "game": game, "mix": voice + game}[which]


def write_tracks(path, tracks: Sequence[dict], codec: str = "aac") -> Path:
    """A Matroska (or mp4) file with one audio stream per entry of `tracks`, each a dict:
    blocks (float32 (channels, n) iterable), and optional title, rate (44100), start_sec (its
    first sample's time), drop ((start, end) seconds whose packets are left out: a hole),
    codec. Streams are muxed interleaved as a recorder writes them."""
    path = Path(path)
    with av.open(str(path), "w", container_options={"fflags": "+bitexact"}) as out:
        streams = []
        for track in tracks:
            rate = track.get("rate", RATE)
            stream = out.add_stream(track.get("codec", codec), rate=rate)
            stream.layout = "stereo"
            if stream.codec_context.name == "aac":
                stream.options = {"aac_coder": "fast"}  # several times faster; fine here
            if track.get("title"):
                stream.metadata["title"] = track["title"]
            streams.append(stream)
        out.start_encoding()
        iters = [iter(t["blocks"]) for t in tracks]
        written = [0] * len(tracks)

        def mux(i, packets):
            track = tracks[i]
            for p in packets:
                t = float(p.pts * p.time_base) if p.pts is not None else 0.0
                if any(s <= t < e for s, e in track.get("drop", ())):
                    continue
                shift = int(Fraction(track.get("start_sec", 0.0)).limit_denominator(100000)
                            / p.time_base)
                p.pts, p.dts = p.pts + shift, p.dts + shift
                out.mux(p)

        live = set(range(len(tracks)))
        while live:
            for i in sorted(live):
                block = next(iters[i], None)
                if block is None:
                    live.discard(i)
                    mux(i, streams[i].encode(None))
                    continue
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block, np.float32),
                                                   format="fltp", layout="stereo")
                frame.sample_rate = streams[i].rate
                frame.time_base = Fraction(1, streams[i].rate)
                frame.pts = written[i]
                written[i] += block.shape[1]
                mux(i, streams[i].encode(frame))
    return path


def obs_recording(path, stream: TrackedStream, titles=("Mix", "Mic/Aux", "Desktop Audio"),
                  codec: str = "aac"):
    """The 3-track file OBS writes: mix (voice + game), microphone, game."""
    return write_tracks(path, [{"blocks": stream.blocks(w), "title": t}
                               for w, t in zip(("mix", "voice", "game"), titles)], codec)


def moments_every_minute(seconds: float) -> list:
    """A loud moment of 6 s every 60 s (from 20 s on): what the CRNN's windows meet."""
    return [(t, t + 6.0) for t in np.arange(20.0, seconds - 10.0, 60.0)]


def _detect(media: Path, out: Path, flags: Sequence[str]) -> float:
    """Wall seconds of one `highlightsense detect` in a fresh process (model load included)."""
    command = [sys.executable, "-m", "highlightsense.engine.cli", "detect", str(media),
               "--out", str(out), "--no-clips", "--device", "cpu", "-q", *flags]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"detect failed: {done.stderr.strip()}")
    return time.perf_counter() - began


def _scores(out: Path) -> np.ndarray:
    import csv

    with open(out / "raw_window_scores.csv", newline="") as f:
        return np.array([float(r["confidence"]) for r in csv.DictReader(f)])


def speed(minutes: float, size: str, work: Path, demucs: bool = True) -> None:
    """x realtime of detect --model with the tracks and with Demucs, each with and without
    --single-pass, on one generated 3-track file."""
    from highlightsense.benchmarks.bench_support import write_random_crnn, write_random_separator

    seconds = minutes * 60
    media = obs_recording(work / "obs.mkv", TrackedStream(seconds, moments_every_minute(seconds)))
    crnn = write_random_crnn(work / "best_model.pt", size)
    separator = write_random_separator(work / "separator", size)
    runs = [("tracks", ["--voice-track", "1", "--game-track", "2"])]
    if demucs:
        runs.append(("demucs", ["--separator", str(separator)]))
    print(f"input: {minutes:g} min, 3 AAC tracks in Matroska; models: {size} size, random "
          f"weights; CPU threads: {_threads()}")
    print("wall: the whole process (imports and model loading included); first pass: its "
          "pipeline alone (highlights.json wall_sec)")
    print(f"{'stems':<8} {'passes':<8} {'wall s':>8} {'x realtime':>11} {'1st pass s':>11} "
          f"{'x realtime':>11}")
    results = {}
    for name, flags in runs:
        for passes, extra in (("two", []), ("single", ["--single-pass"])):
            out = work / f"{name}-{passes}"
            wall = _detect(media, out, ["--model", str(crnn), *flags, *extra])
            results[name, passes] = (wall, _scores(out))
            first = json.loads((out / "highlights.json").read_text())["wall_sec"]
            print(f"{name:<8} {passes:<8} {wall:8.1f} {seconds / wall:11.1f} {first:11.1f} "
                  f"{seconds / first:11.1f}", flush=True)
    if demucs:
        for passes in ("two", "single"):
            ratio = results["demucs", passes][0] / results["tracks", passes][0]
            print(f"tracks are {ratio:.1f}x faster than Demucs ({passes} pass"
                  f"{'es' if passes == 'two' else ''})")


def compare_stems(seconds: float, work: Path) -> None:
    """How far the small test CRNN's scores move between Demucs stems (the tiny random test
    separator) and the true stems of the same mix: detect on one 3-track file both ways."""
    from highlightsense.benchmarks.bench_support import write_small_models
    from highlightsense.engine.cli import main

    media = obs_recording(work / "obs.mkv", TrackedStream(seconds, moments_every_minute(seconds)))
    separator, crnn = write_small_models(work)
    common = [str(media), "--model", str(crnn), "--device", "cpu", "--no-clips", "-q"]
    with contextlib.redirect_stdout(io.StringIO()):  # the tables: only the figures here
        assert main(["detect", *common, "--out", str(work / "true"), "--voice-track", "1",
                     "--game-track", "2"]) == 0
        assert main(["detect", *common, "--out", str(work / "demucs"), "--separator",
                     str(separator)]) == 0
    true, separated = _scores(work / "true"), _scores(work / "demucs")
    diff = np.abs(true - separated)
    top = max(1, len(true) // 10)
    kept = len(set(np.argsort(-true)[:top]) & set(np.argsort(-separated)[:top]))
    print(f"{len(true)} windows of {seconds:g} s: |p(true stems) - p(Demucs stems)| mean "
          f"{diff.mean():.4f}, median {np.median(diff):.4f}, max {diff.max():.4f}; pearson "
          f"{np.corrcoef(true, separated)[0, 1]:.4f}; score spread (std) true {true.std():.4f}, "
          f"Demucs {separated.std():.4f}; top {top} windows in common: {kept}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="input length (default 10)")
    p.add_argument("--size", choices=("full", "small"), default="full",
                   help="model sizes (full: the seed's CRNN and htdemucs's shapes)")
    p.add_argument("--skip-demucs", action="store_true", help="time the tracks only")
    p.add_argument("--compare-stems", action="store_true",
                   help="the score shift between Demucs stems and the true stems instead")
    p.add_argument("--compare-seconds", type=float, default=180.0)
    p.add_argument("--work", metavar="DIR", help="keep the files here (default: a temp folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.compare_stems:
            compare_stems(args.compare_seconds, work)
        else:
            speed(args.minutes, args.size, work, demucs=not args.skip_demucs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
