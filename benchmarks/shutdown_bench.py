"""How `detect` ends, run after run: clean, failing mid-stream and Ctrl-C'd runs of the model path
(decode -> Demucs -> log-mel -> CRNN) with OMP_NUM_THREADS=1, counting exit statuses. Each
should be 0, 1 and 130 respectively; 134 ("terminate called without an active exception") is
a thread that interpreter teardown met inside torch (see engine/threads.py).

    python -m highlightsense.benchmarks.shutdown_bench [--clean 50] [--failing 20]
        [--interrupted 20] [--seconds 40] [--parallel 2]

Tiny random models (the real classes) and a generated input keep each run to a few seconds.
A failing run reads the input from a pipe with --max-duration below its length, so it stops
mid-stream while Demucs is at work; a Ctrl-C'd run gets SIGINT at a random moment after its
first progress record (written every 0.2 s once the stages run). Prints each kind's exit statuses, wall times, and any stderr line that
is not the expected one.
"""
import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EXPECTED = {"clean": 0, "failing": 1, "interrupted": 130}


def _command(media, models, out: Path, config: Path, *extra) -> list:
    separator, checkpoint = models
    return [sys.executable, "-m", "highlightsense", "detect", str(media), "--model",
            str(checkpoint), "--separator", str(separator), "--device", "cpu", "--out", str(out),
            "--config", str(config), "--no-clips", "--single-pass", "-q", *extra]


def _record_written(out: Path) -> bool:
    """The run's first progress record is there: its stages (Demucs among them) are at work."""
    return (out / ".highlightsense-progress.json").exists()


def one_run(kind: str, k: int, media, models, folder: Path, config: Path, env: dict,
            seconds: float) -> tuple:
    out = folder / f"{kind}-{k}"
    began = time.monotonic()
    if kind == "failing":
        limit = f"0:{max(1, int(seconds / 2)):02d}"  # stops mid-stream
        command = _command("/dev/stdin", models, out, config, "--max-duration", limit)
        with open(media, "rb") as stdin:
            done = subprocess.run(command, stdin=stdin, capture_output=True, text=True, env=env,
                                  timeout=300)
        return kind, done.returncode, time.monotonic() - began, done.stderr
    child = subprocess.Popen(_command(media, models, out, config), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if kind == "interrupted":
        rng = random.Random(k)
        while child.poll() is None and not _record_written(out):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        child.send_signal(signal.SIGINT)
    err = child.stderr.read()
    return kind, child.wait(timeout=300), time.monotonic() - began, err


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", type=int, default=50)
    p.add_argument("--failing", type=int, default=20)
    p.add_argument("--interrupted", type=int, default=20)
    p.add_argument("--seconds", type=float, default=16.0, help="input length")
    p.add_argument("--parallel", type=int, default=2, help="runs at once")
    args = p.parse_args(argv)

    from highlightsense.benchmarks.bench_support import write_small_models
    from highlightsense.benchmarks.media import write_media
    from highlightsense.benchmarks.synth import SyntheticVod

    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = write_small_models(folder / "models")
        vod = SyntheticVod(args.seconds, seed=4, moments=[(4.0, 8.0)], music=[], bangs=[])
        media = write_media(folder / "vod.mkv", vod.blocks(), audio_codec="aac")
        config = folder / "c.yaml"
        config.write_text("progress_every_sec: 0.2\nthreshold_percentile: 80\nbatch_size: 4\n")
        jobs = ([("clean", k) for k in range(args.clean)]
                + [("failing", k) for k in range(args.failing)]
                + [("interrupted", k) for k in range(args.interrupted)])
        random.Random(0).shuffle(jobs)  # the kinds interleaved, as a user's runs come
        began = time.monotonic()
        results = []

        def job_done(job):
            result = one_run(*job, media, models, folder, config, env, args.seconds)
            results.append(result)  # and said at once: a long series shows how it goes
            print(f"{len(results):>3}/{len(jobs)} {result[0]:<12} exit {result[1]:>3} "
                  f"{result[2]:5.1f} s", flush=True)

        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(job_done, jobs))
        wall = time.monotonic() - began
    statuses = collections.defaultdict(collections.Counter)
    times = collections.defaultdict(list)
    odd = []
    for kind, code, sec, err in results:
        statuses[kind][code] += 1
        times[kind].append(sec)
        if code != EXPECTED[kind] or "Traceback" in err or "terminate called" in err:
            odd.append(f"{kind}: exit {code}: {err.strip()[-300:]}")
    print(f"{len(results)} runs in {wall:.0f} s, OMP_NUM_THREADS=1, {args.parallel} at once, "
          f"{args.seconds:g} s input, tiny HTDemucs + small CRNN")
    for kind in EXPECTED:
        if times[kind]:
            counts = ", ".join(f"exit {c}: {n}" for c, n in sorted(statuses[kind].items()))
            print(f"  {kind:<12} {len(times[kind]):>3} runs  {counts:<24} "
                  f"wall {min(times[kind]):.1f}-{max(times[kind]):.1f} s "
                  f"(expected exit {EXPECTED[kind]})")
    crashed = sum(n for counter in statuses.values() for c, n in counter.items() if c == 134)
    print(f"  exit 134 (terminate called without an active exception): {crashed}")
    for line in odd:
        print("  " + line)
    return 0 if not odd else 1


if __name__ == "__main__":
    sys.exit(main())
