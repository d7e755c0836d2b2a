"""Fuzz the decoder with broken media: truncated, bit-flipped, overwritten, cut and spliced files.

Every input is decoded to the end by `AudioDecoder` in a child process. An input passes when it
decodes (to any number of chunks that keep the chunk contract) or when the decoder refuses it
with a `HighlightSenseError` whose message is one line. Anything else fails: another exception
(a traceback for the user), a crash (segfault, abort), or a hang (no answer within
HS_FUZZ_FILE_TIMEOUT seconds, default 20). A failure names the seed file and the mutations, and
keeps the broken file (in HS_FUZZ_KEEP, else the test's temporary folder) to reproduce it with

    python tests/test_fuzz_decode.py --replay BROKEN_FILE

One child decodes input after input (its Python start-up is paid once); the parent waits for
each answer with a watchdog, and on a hang asks the child for its stacks (faulthandler) before
killing it and starting another.

In the test suite the run is bounded: HS_FUZZ_EXAMPLES inputs (default 1000) and at most
HS_FUZZ_SECONDS seconds of fuzzing (default 30). It prints how many inputs were tried (see it
with -s) and writes the counts as JSON to the file HS_FUZZ_REPORT names, if set. To fuzz longer,
outside CI, collecting every failure instead of stopping at the first:

    python tests/test_fuzz_decode.py --seconds 300
"""
import argparse
import collections
import contextlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from highlightsense.benchmarks.media import beeps, tone, write_media

FILE_TIMEOUT = float(os.environ.get("HS_FUZZ_FILE_TIMEOUT", "20"))
EXAMPLES = int(os.environ.get("HS_FUZZ_EXAMPLES", "1000"))
SECONDS = float(os.environ.get("HS_FUZZ_SECONDS", "30"))
CHILD_MEMORY = 4 << 30  # address space for the child: a runaway allocation fails, not the host

# The seed media: a couple of seconds each, every container and codec the README promises.
# name -> keyword arguments for write_media (plus "seconds", "signal").
SEEDS = {
    "aac.mp4": {},
    "aac_video.mp4": {"video": True, "video_size": (64, 36), "fps": 5},
    "aac_mono_48k.m4a": {"rate": 48000, "channels": 1},
    "aac.mkv": {},
    "flac_gap.mkv": {"audio_codec": "flac", "drop": [(0.8, 1.3)]},
    "aac_offset.ts": {"start_sec": 3.0},
    "pcm16.wav": {"rate": 22050},
    "s.flac": {},
    "s.mp3": {},
    "opus.ogg": {},
    "opus.webm": {"channels": 1},
    "two_streams.mkv": {"more_audio": "tone"},
}
SEED_SECONDS = 2.5

# The child: decodes the files it is sent, one JSON line in, one JSON line out per file.
WORKER = r"""
import faulthandler, json, logging, resource, signal, sys, traceback
faulthandler.enable()  # a crash prints the stacks to stderr
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks this on a hang
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
logging.disable(logging.WARNING)  # the decoder's warnings about the damage are expected
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.decode import AudioDecoder
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    result = {"id": job["id"], "chunks": 0, "samples": 0, "nonfinite": 0}
    try:
        for chunk in AudioDecoder(job["path"]):
            s = chunk.samples
            if (s.dtype.name != "float32" or s.ndim != 2 or s.shape[0] != 2 or s.shape[1] == 0
                    or chunk.rate != 44100 or chunk.start != result["samples"]):
                raise AssertionError(
                    f"chunk {result['chunks']} breaks the chunk contract: dtype {s.dtype}, "
                    f"shape {s.shape}, rate {chunk.rate}, start {chunk.start} "
                    f"(expected {result['samples']})")
            result["chunks"] += 1
            result["samples"] += s.shape[1]
            result["nonfinite"] += int(s.size - __import__("numpy").isfinite(s).sum())
        result["outcome"] = "ok"
    except HighlightSenseError as e:
        result["outcome"] = "user_error"
        result["message"] = str(e)
    except BaseException as e:
        result["outcome"] = "exception"
        result["message"] = f"{type(e).__module__}.{type(e).__qualname__}: {e}"
        result["traceback"] = traceback.format_exc()
    print(json.dumps(result), flush=True)
"""


class DecodeWorker:
    """A child process that decodes files on request, restarted after a hang or a crash."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.proc = None
        self.stderr = None
        self.jobs = 0
        self.starts = 0

    def _start(self):
        if self.stderr is not None:
            self.stderr.close()
        self.starts += 1
        self.stderr_path = self.log_dir / f"worker-{self.starts}.stderr"
        self.stderr = open(self.stderr_path, "w+b")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(CHILD_MEMORY)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                         daemon=True).start()
        ready = self.lines.get(timeout=60)
        if ready is None:
            raise RuntimeError(f"the decode worker did not start:\n{self._stderr_tail()}")

    @staticmethod
    def _read(stream, lines):
        with stream:  # closed here, at end of file, not from the other thread
            for line in iter(stream.readline, b""):
                try:
                    lines.put(json.loads(line))
                except ValueError:
                    pass  # not ours: something in the child wrote to stdout
        lines.put(None)

    def _stderr_tail(self, since: int = 0) -> str:
        self.stderr.flush()
        self.stderr.seek(since)
        text = self.stderr.read().decode(errors="replace")
        self.stderr.seek(0, os.SEEK_END)
        return text[-6000:]

    def decode(self, path, timeout: float = FILE_TIMEOUT) -> dict:
        if self.proc is None:
            self._start()
        self.jobs += 1
        since = self.stderr.seek(0, os.SEEK_END)
        try:
            job = json.dumps({"id": self.jobs, "path": str(path)}) + "\n"
            self.proc.stdin.write(job.encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died: the reader says so
        try:
            result = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.proc.send_signal(signal.SIGUSR1)  # faulthandler: where is it stuck?
            time.sleep(1.0)
            self._stop()
            return {"outcome": "hang", "message": f"no answer within {timeout:g} s",
                    "stderr": self._stderr_tail(since)}
        if result is None:
            code = self.proc.wait()
            self._stop()
            why = (f"killed by signal {signal.Signals(-code).name}" if code < 0
                   else f"exit status {code}")
            return {"outcome": "crash", "message": f"the decoding process died: {why}",
                    "stderr": self._stderr_tail(since)}
        assert result["id"] == self.jobs, result
        return result

    def _stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc = None

    def close(self):
        if self.proc is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()  # the child ends at end of input
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._stop()
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None


# -- seeds and mutations --------------------------------------------------------------------------

def write_seeds(folder: Path) -> dict:
    """The seed files, written with PyAV: name -> bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for name, spec in SEEDS.items():
        spec = dict(spec)
        rate, channels = spec.pop("rate", 44100), spec.pop("channels", 2)
        if spec.pop("more_audio", None):
            spec["more_audio"] = [tone(SEED_SECONDS, 660, rate, channels, block=4096)]
        blocks = beeps(SEED_SECONDS, [0.3, 1.1, 2.0], rate, channels, block=4096)
        path = write_media(folder / name, blocks, rate=rate, channels=channels, **spec)
        seeds[name] = path.read_bytes()
    return seeds


def _where(pos, size: int) -> int:
    """An offset into `size` bytes: ("head", k) from the start, ("tail", k) from the end,
    ("frac", x) a fraction of the way."""
    kind, value = pos
    if size == 0:
        return 0
    if kind == "head":
        return min(value, size - 1)
    if kind == "tail":
        return max(0, size - 1 - value)
    return min(size - 1, int(value * size))


INTERESTING = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
               b"\x00\x00\x00\x01", b"\x00\x00\x00\x08", b"\xff\xff\xff\xfe", b"\x00\x01\x00\x00"]


def mutate(data: bytes, mutations) -> bytes:
    """Applies the mutations in order (see `mutations()` for what each one is)."""
    buf = bytearray(data)
    for m in mutations:
        op, pos = m[0], _where(m[1], len(buf))
        if not buf:
            break
        if op == "truncate":
            del buf[pos:]
        elif op == "flip":
            buf[pos] ^= 1 << m[2]
        elif op == "overwrite":
            buf[pos:pos + len(m[2])] = m[2]
        elif op == "int":  # a 4-byte value that size and count fields choke on
            buf[pos:pos + 4] = INTERESTING[m[2]]
        elif op == "noise":
            buf[pos:pos + m[2]] = random.Random(m[3]).randbytes(len(buf[pos:pos + m[2]]))
        elif op == "zero":
            buf[pos:pos + m[2]] = bytes(len(buf[pos:pos + m[2]]))
        elif op == "delete":
            del buf[pos:pos + m[2]]
        elif op == "duplicate":
            piece = bytes(buf[pos:pos + m[2]])
            at = _where(m[3], len(buf))
            buf[at:at] = piece
        else:
            raise ValueError(op)
    return bytes(buf)


def positions():
    # Headers sit at the start (and mp4's moov, written last, at the end): aim there often.
    return st.one_of(st.tuples(st.just("head"), st.integers(0, 2047)),
                     st.tuples(st.just("tail"), st.integers(0, 2047)),
                     st.tuples(st.just("frac"), st.floats(0, 1, allow_nan=False)))


def mutations():
    one = st.one_of(
        st.tuples(st.just("truncate"), positions()),
        st.tuples(st.just("flip"), positions(), st.integers(0, 7)),
        st.tuples(st.just("overwrite"), positions(), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("int"), positions(), st.integers(0, len(INTERESTING) - 1)),
        st.tuples(st.just("noise"), positions(), st.integers(1, 4096), st.integers(0, 2**16)),
        st.tuples(st.just("zero"), positions(), st.integers(1, 4096)),
        st.tuples(st.just("delete"), positions(), st.integers(1, 8192)),
        st.tuples(st.just("duplicate"), positions(), st.integers(1, 8192), positions()),
    )
    return st.lists(one, min_size=1, max_size=5)


# -- the fuzz loop --------------------------------------------------------------------------------

ACCEPTED = ("ok", "user_error")


def verdict(result: dict) -> str | None:
    """Why a decode result is a failure, or None when it is acceptable."""
    if result["outcome"] == "user_error":
        msg = result.get("message", "")
        if not msg.strip() or "\n" in msg.strip():
            return f"HighlightSenseError whose message is not one line: {msg!r}"
        return None
    if result["outcome"] == "ok":
        return None
    return result["message"]


def describe(seed: str, muts, result: dict, kept: Path) -> str:
    text = [f"seed {seed}, mutations {muts!r}", f"input kept as {kept}",
            f"outcome: {result['outcome']}: {result.get('message')}"]
    if result.get("traceback"):
        text.append(result["traceback"].rstrip())
    if result.get("stderr"):
        text.append("child stderr:\n" + result["stderr"].rstrip())
    text.append(f"reproduce: {sys.executable} {__file__} --replay {kept}")
    return "\n".join(text)


class Fuzzer:
    """Mutates seeds, sends them to the worker and judges the results; counts everything."""

    def __init__(self, seeds: dict, work_dir: Path, keep_dir: Path):
        self.seeds = seeds
        self.work_dir = Path(work_dir)
        self.keep_dir = Path(keep_dir)
        self.worker = DecodeWorker(self.work_dir)
        self.tried = 0
        self.outcomes = collections.Counter()
        self.messages = collections.Counter()
        self.nonfinite_inputs = 0
        self.failures = []  # descriptions

    def check(self, seed: str, muts) -> str | None:
        """Decodes one mutated seed: None if acceptable, else the failure's description."""
        data = mutate(self.seeds[seed], muts)
        path = self.work_dir / f"input{Path(seed).suffix}"
        path.write_bytes(data)
        result = self.worker.decode(path)
        self.tried += 1
        self.outcomes[result["outcome"]] += 1
        if result["outcome"] == "user_error":
            self.messages[result["message"].replace(str(path), "FILE")] += 1
        if result.get("nonfinite"):
            self.nonfinite_inputs += 1
        why = verdict(result)
        if why is None:
            return None
        self.keep_dir.mkdir(parents=True, exist_ok=True)
        kept = self.keep_dir / f"failure-{len(self.failures) + 1:03d}-{seed}"
        shutil.copyfile(path, kept)
        text = describe(seed, muts, result, kept)
        self.failures.append(text)
        return text

    def run(self, examples: int, seconds: float, stop_at_first: bool = True):
        """One hypothesis run of up to `examples` inputs, stopping after `seconds` of it."""
        deadline = time.monotonic() + seconds

        @settings(max_examples=examples, deadline=None, database=None,
                  phases=(Phase.explicit, Phase.generate),  # no shrinking: a hang costs 20 s
                  suppress_health_check=list(HealthCheck))
        @given(seed=st.sampled_from(sorted(self.seeds)), muts=mutations())
        def fuzz(seed, muts):
            if time.monotonic() > deadline:
                return  # out of time: hypothesis runs out its examples at no cost
            failure = self.check(seed, muts)
            if failure and stop_at_first:
                raise AssertionError(failure)

        fuzz()

    def summary(self) -> dict:
        return {"fuzz_inputs_tried": self.tried, "outcomes": dict(self.outcomes),
                "inputs_with_nonfinite_samples": self.nonfinite_inputs,
                "worker_starts": self.worker.starts, "failures": len(self.failures),
                "user_errors": dict(self.messages.most_common())}


# -- pytest ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    seeds = write_seeds(tmp_path_factory.mktemp("fuzz-seeds"))
    keep = Path(os.environ.get("HS_FUZZ_KEEP") or tmp_path_factory.mktemp("fuzz-failures"))
    f = Fuzzer(seeds, tmp_path_factory.mktemp("fuzz-work"), keep)
    yield f
    f.worker.close()


def test_every_seed_decodes_cleanly(fuzzer):
    """The seeds themselves decode to about their length (else the fuzzing proves little)."""
    for name, data in fuzzer.seeds.items():
        result = fuzzer.worker.decode(_write(fuzzer.work_dir / f"seed{Path(name).suffix}", data))
        assert result["outcome"] == "ok", (name, result)
        assert abs(result["samples"] / 44100 - SEED_SECONDS) < 0.1, (name, result)
        assert result["nonfinite"] == 0, (name, result)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_broken_media_decodes_or_fails_with_one_line(fuzzer):
    start = time.monotonic()
    try:
        fuzzer.run(EXAMPLES, SECONDS)
    finally:
        summary = fuzzer.summary()
        summary["seconds"] = round(time.monotonic() - start, 1)
        print(f"\nfuzz inputs tried: {fuzzer.tried} in {summary['seconds']} s; "
              f"outcomes {dict(fuzzer.outcomes)}")
        if os.environ.get("HS_FUZZ_REPORT"):
            Path(os.environ["HS_FUZZ_REPORT"]).write_text(json.dumps(summary, indent=2) + "\n")
    assert fuzzer.tried > 0


# Inputs the fuzzing found that once broke the decoder: (seed, mutations), each with what it did.
FOUND = {
    "metadata-not-utf8": (  # UnicodeDecodeError from av.open reading the container's tags
        "aac.mp4", [("int", ("head", 8), 3), ("overwrite", ("head", 1000), b"M\xe2")]),
    "codec-unknown": (  # AttributeError: the audio stream has no codec context
        "aac.mp4", [("flip", ("tail", 207), 2), ("delete", ("frac", 0.9398502892253136), 2867),
                    ("delete", ("tail", 1), 227)]),
    "demux-enomem": (  # av.error.MemoryError from demux, mid-file
        "aac.mp4", [("noise", ("frac", 0.8536426537772568), 483, 483),
                    ("overwrite", ("tail", 483), b"#\x9f\xb6")]),
    "demux-eagain": (  # av.error.BlockingIOError (EAGAIN) from demux in a .ts
        "aac_offset.ts", [("duplicate", ("tail", 126), 126, ("tail", 0))] * 2),
    "stereo-to-mono": (  # ValueError: a mono frame slipped through the stereo resampler
        "s.mp3", [("duplicate", ("tail", 156), 5896, ("tail", 0)), ("delete", ("tail", 817), 79),
                  ("delete", ("frac", 0.0982934773990072), 1251)]),
    "45-channels": (  # av.error.ArgumentError: the resampler cannot take a 45-channel frame
        "aac.mkv", [("noise", ("frac", 0.4446736598033515), 451, 5624), ("int", ("head", 59), 0),
                    ("int", ("frac", 0.4446736598033515), 0)]),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_inputs_that_once_failed(fuzzer, name):
    seed, muts = FOUND[name]
    failure = fuzzer.check(seed, muts)
    assert failure is None, failure


def test_the_watchdog_catches_hangs_and_crashes(fuzzer, tmp_path):
    """A read that never returns (a FIFO nobody writes) is a hang, with the child's stacks; a
    child killed by a signal is a crash; the next input gets a fresh child."""
    fifo = tmp_path / "stuck.wav"
    os.mkfifo(fifo)
    seed = _write(tmp_path / "seed.wav", fuzzer.seeds["pcm16.wav"])
    worker = DecodeWorker(tmp_path)
    try:
        hang = worker.decode(fifo, timeout=3)
        assert hang["outcome"] == "hang" and "open_media" in hang["stderr"], hang
        assert verdict(hang)
        assert worker.decode(seed)["outcome"] == "ok"
        pid = worker.proc.pid
        threading.Timer(1.0, os.kill, (pid, signal.SIGSEGV)).start()
        crash = worker.decode(fifo, timeout=30)
        assert crash["outcome"] == "crash" and "SIGSEGV" in crash["message"], crash
        assert "Segmentation fault" in crash["stderr"], crash
        assert worker.decode(seed)["outcome"] == "ok" and worker.starts == 3
    finally:
        worker.close()


def test_mutations_do_what_they_say():
    data = bytes(range(100))
    assert mutate(data, [("truncate", ("head", 10))]) == data[:10]
    assert mutate(data, [("truncate", ("tail", 0))]) == data[:99]
    assert mutate(data, [("flip", ("head", 3), 0)])[3] == 2
    assert mutate(data, [("delete", ("frac", 0.5), 10)]) == data[:50] + data[60:]
    assert mutate(data, [("duplicate", ("head", 0), 2, ("head", 5))])[:8] == bytes(
        [0, 1, 2, 3, 4, 0, 1, 5])
    assert mutate(data, [("int", ("tail", 1), 1)]) == data[:98] + b"\xff\xff\xff\xff"
    assert len(mutate(data, [("noise", ("head", 90), 50, 1)])) == 100
    assert mutate(b"", [("flip", ("head", 0), 1)]) == b""


# -- standalone: fuzz for longer ------------------------------------------------------------------

def _replay(path: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        worker = DecodeWorker(Path(tmp))
        try:
            result = worker.decode(path)
        finally:
            worker.close()
    print(json.dumps(result, indent=2))
    return 0 if verdict(result) is None else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Fuzz the decoder with broken media for a while.")
    p.add_argument("--seconds", type=float, default=300.0, help="how long to fuzz (default 300)")
    p.add_argument("--keep", metavar="DIR", default="fuzz-failures",
                   help="folder for the inputs that fail (default fuzz-failures)")
    p.add_argument("--report", metavar="FILE", help="write the counts as JSON here")
    p.add_argument("--replay", metavar="FILE", help="decode one saved input and show the result")
    args = p.parse_args(argv)
    if args.replay:
        return _replay(Path(args.replay))
    with tempfile.TemporaryDirectory() as tmp:
        seeds = write_seeds(Path(tmp) / "seeds")
        work = Path(tmp) / "work"
        work.mkdir()
        fuzzer = Fuzzer(seeds, work, Path(args.keep))
        end = time.monotonic() + args.seconds
        try:
            while time.monotonic() < end:
                fuzzer.run(500, end - time.monotonic(), stop_at_first=False)
                print(f"{fuzzer.tried} inputs, outcomes {dict(fuzzer.outcomes)}, "
                      f"{len(fuzzer.failures)} failures", flush=True)
        finally:
            fuzzer.worker.close()
    for text in fuzzer.failures:
        print("\n" + text)
    summary = fuzzer.summary()
    print(json.dumps(summary, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if fuzzer.failures else 0


if __name__ == "__main__":
    sys.exit(main())
