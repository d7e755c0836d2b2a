"""Shared pieces of `highlightsense bench` (benchmarks/bench.py) and the seed's way
(benchmarks/seed_way.py): generated inputs, random-weight models written to files the real
loaders read, and the measurements a job takes of itself.

Not run on its own. What is measured, and how:

- Peak RSS: VmHWM of /proc/self/status, read by the job at its end. Every measured job runs in
  a fresh child process, so the figure is the job's; VmHWM, not getrusage's ru_maxrss, because
  ru_maxrss survives exec and would report the pages of a big parent at fork.
- Bytes written: /proc/self/io of the job at its end. The kernel adds a reaped child's counters
  to its parent's, so the job's figures cover the whole process tree (the seed's per-chunk
  demucs processes included). `write_bytes` is what the tree sent to the storage layer
  (counted when a page is dirtied, whole pages; "bytes written to disk"), which includes the
  filesystem metadata the tree dirtied (creating, renaming and fsyncing files: a few pages
  each; measured here, a short engine run with a dozen small files shows 20-200 KB of it) and
  never counts a tmpfs. `wchar` is every byte passed to write() on any file, pipe or tmpfs. The
  job's stdout/stderr are pipes to the bench, which counts the bytes it receives on them, so
  `wchar - pipe bytes` is the file data written on any filesystem, tmpfs included, exactly:
  the measure for "no intermediates", with write_bytes beside it as the disk's view. They count
  from the end of the job's imports (start_io): importing torch's CUDA build runs
  `ldconfig -p` into a pipe of its own (cuda.pathfinder), which is neither the job's work nor a
  file.
- Model compute: forward pre- and post-hooks on the top-level Demucs model(s) and the CRNN add up
  the time of every forward call, in the thread that makes it (on CUDA after a synchronize, so
  the time is the kernels', not their launch).
"""
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from highlightsense.engine.errors import HighlightSenseError

PAGE = 4096
RATE = 44100

# ---- inputs and models ------------------------------------------------------------------------


def generate_input(path, minutes: float, seed: int = 0, video: bool = False) -> Path:
    """A synthetic game-stream VOD (benchmarks.synth) encoded as a real media file (AAC audio;
    the container from the extension), written block by block."""
    from highlightsense.benchmarks.media import write_media
    from highlightsense.benchmarks.synth import SyntheticVod

    return write_media(Path(path), SyntheticVod(minutes * 60, seed=seed).blocks(), video=video)


def write_finished_run(out_dir, windows, cfg, **info) -> Path:
    """A run folder as detect finishes one (engine.selection.finish), without clips, from window
    scores a benchmark computed itself; `info` as highlights.json records it (source, ...)."""
    from dataclasses import replace

    from highlightsense.engine.selection import finish
    from highlightsense.operators.sinks import tables

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"origin_sec": 0.0, "duration_sec": windows[-1].end_sec, **info}
    tables.write_scores(out_dir, windows)
    finish(out_dir, windows, replace(cfg, clips=False), info)
    return out_dir


CRNN_SIZES = ("full", "small")
SEPARATOR_SIZES = ("full", "small", "tiny")


def crnn_config(size: str):
    from highlightsense.model.crnn import CrnnConfig

    if size == "full":
        return CrnnConfig()  # the seed notebook's sizes
    if size == "small":
        return CrnnConfig(cnn_channels=(4, 8, 8, 16), rnn_hidden=12, att_dim=6,
                          classifier_hidden=10)
    raise ValueError(f"CRNN size {size!r}: one of {', '.join(CRNN_SIZES)}")


def write_random_crnn(path, size: str = "full", seed: int = 0) -> Path:
    """A checkpoint as the seed saves it ({'model': state_dict, 'epochs': n}) of the real CRNN
    class with random weights; model.checkpoint.load_model reads it."""
    import torch

    from highlightsense.model.crnn import HighlightSenseModel

    torch.manual_seed(seed)
    model = HighlightSenseModel.from_config(crnn_config(size)).eval()
    torch.save({"model": model.state_dict(), "epochs": 0}, path)
    return Path(path)


def random_htdemucs(size: str = "full", seed: int = 0):
    """HTDemucs with random weights: `full` is the pretrained htdemucs's shape (41,984,456
    parameters, segment 7.8 s), `small` a narrow one with the same 7.8 s segment (real buffer
    sizes), `tiny` a narrow one with 2 s segments (fast, for tests)."""
    from fractions import Fraction

    import torch
    from demucs.htdemucs import HTDemucs

    from highlightsense.benchmarks.separation_bench import (SOURCES, full_size_htdemucs,
                                                            small_htdemucs)

    if size == "full":
        return full_size_htdemucs(seed)
    if size == "small":
        return small_htdemucs(seed)
    if size == "tiny":
        torch.manual_seed(seed)
        return HTDemucs(SOURCES, segment=Fraction(2), channels=4, depth=4, nfft=4096,
                        t_layers=1, t_heads=1, dconv_comp=2).eval()
    raise ValueError(f"separator size {size!r}: one of {', '.join(SEPARATOR_SIZES)}")


def write_random_separator(folder, size: str = "full", seed: int = 0) -> Path:
    """A demucs `.th` package in a folder of its own (a demucs repo the CLI reads with
    `--repo FOLDER -n bench`); model.separator.load_separator reads the file."""
    from highlightsense.model.separator import save_package

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return save_package(random_htdemucs(size, seed), folder / "bench.th")


def write_small_models(folder) -> Tuple[Path, Path]:
    """(separator .th, CRNN checkpoint): a tiny HTDemucs and a small CRNN with random weights,
    written with the real classes, for tests and quick runs."""
    folder = Path(folder)
    return (write_random_separator(folder, "tiny"),
            write_random_crnn(folder / "best_model.pt", "small"))


def demucs_cli_model(separator: str) -> Tuple[Optional[str], str]:
    """(repo folder or None, model name) for `python -m demucs [--repo R] -n NAME`, from what
    `--separator` takes: a demucs model name, a `.th` file or a repo folder."""
    path = Path(os.path.expanduser(separator))
    if path.is_file():
        if path.suffix != ".th":
            raise ValueError(f"the demucs CLI reads .th packages; {path} is not one")
        return str(path.parent), path.stem.rsplit("-", 1)[0] if "-" in path.stem else path.stem
    if path.is_dir():
        names = sorted({p.stem for p in path.glob("*.yaml")}) or sorted(
            {p.stem.rsplit("-", 1)[0] for p in path.glob("*.th")})
        if len(names) != 1:
            raise ValueError(f"{path} holds {len(names)} models; give the .th file")
        return str(path), names[0]
    return None, separator


# ---- measurements -----------------------------------------------------------------------------


def io_counters(pid="self") -> Dict[str, int]:
    """/proc/PID/io: rchar, wchar, syscr, syscw, read_bytes, write_bytes, cancelled_write_bytes."""
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def _status_kb(field: str, pid="self") -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next((x for x in f if x.startswith(field)), None)
    return int(line.split()[1]) if line else 0


def peak_rss_mb(pid="self") -> float:
    return _status_kb("VmHWM", pid) / 1024


def rss_mb(pid="self") -> float:
    return _status_kb("VmRSS", pid) / 1024


def pages(size: int) -> int:
    """A file's bytes as the page cache dirties them (write_bytes counts whole pages)."""
    return -(-size // PAGE) * PAGE


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device) -> dict:
    """The machine as a job saw it: CPU, torch, threads, and the accelerator when used."""
    import torch

    info = {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "load_avg": round(os.getloadavg()[0], 2)}
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda)
    return info


def describe_device(info: dict) -> str:
    text = (f"{info['device']}: {info.get('gpu', info['cpu'])}"
            + (f" ({info['gpu_memory_gb']} GB, CUDA {info['cuda']}), host {info['cpu']}"
               if "gpu" in info else "")
            + f"; {info['cpus']} CPUs, torch {info['torch']}, {info['torch_threads']} threads")
    return text


class ForwardTimer:
    """Sums the time of a module's forward calls (any thread), with torch forward hooks."""

    def __init__(self, name: str, device=None):
        import torch

        self.name, self.sec, self.calls = name, 0.0, 0
        self._local = threading.local()
        self._lock = threading.Lock()
        cuda = device is not None and torch.device(device).type == "cuda"
        self._sync = torch.cuda.synchronize if cuda else (lambda: None)
        self._handles = []

    def attach(self, module) -> "ForwardTimer":
        self._handles += [module.register_forward_pre_hook(self._pre),
                          module.register_forward_hook(self._post)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, module, inputs):
        self._sync()
        self._local.began = time.perf_counter()

    def _post(self, module, inputs, output):
        self._sync()
        spent = time.perf_counter() - self._local.began
        with self._lock:
            self.sec += spent
            self.calls += 1

    def figures(self) -> dict:
        return {"sec": self.sec, "calls": self.calls}


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- running a job in a fresh child process ---------------------------------------------------


class JobFailed(HighlightSenseError):
    """A measured job ended with an error; the message ends with its last lines of stderr."""


def run_job(command: List[str], label: str, quiet: bool = False,
            env: Optional[dict] = None) -> dict:
    """Run a measuring job in a new process: its stderr (progress) relayed to ours line by line,
    prefixed with `label`, and counted; its stdout's last line is its result (JSON). The result
    gains `pipe_bytes` (what the job wrote to its stdout and stderr) and `process_wall_sec`
    (from spawn to exit, interpreter start and imports included)."""
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    counted = {"stderr": 0}
    tail: List[str] = []

    def relay():
        for raw in iter(proc.stderr.readline, b""):
            counted["stderr"] += len(raw)
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            del tail[:-40]
            if not quiet and not line.startswith("error: "):  # JobFailed says it, below
                print(f"[{label}] {line}", file=sys.stderr, flush=True)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    out = proc.stdout.read()
    proc.wait()
    reader.join()
    if proc.returncode != 0:
        if tail and tail[-1].startswith("error: "):  # the job's own one-line error
            raise JobFailed(f"bench: the {label} job stopped: {tail[-1][len('error: '):]}")
        raise JobFailed(f"{label} job failed (exit {proc.returncode}):\n" + "\n".join(tail[-25:]))
    lines = out.decode().strip().splitlines()
    if not lines:
        raise JobFailed(f"{label} job printed no result:\n" + "\n".join(tail[-25:]))
    result = json.loads(lines[-1])
    # The result line itself was written after the job read its counters.
    result["pipe_bytes"] = len(out) - len(lines[-1]) - 1 + counted["stderr"]
    result["process_wall_sec"] = time.perf_counter() - began
    io = result.get("io")
    if io:
        # Everything write() was given, less the pipes to us: files on any filesystem.
        result["file_write_calls_bytes"] = max(0, io["wchar"] - result["pipe_bytes"])
    return result


_io_start: Dict[str, int] = {}


def start_io() -> None:
    """Count I/O from here on (once the job's imports are done)."""
    _io_start.update(io_counters())


def final_io() -> Dict[str, int]:
    """The job's I/O counters since start_io(), its children's included (call after reaping
    them), with stdout and stderr flushed first so the pipe bytes are all counted in wchar."""
    sys.stdout.flush()
    sys.stderr.flush()
    return {k: v - _io_start.get(k, 0) for k, v in io_counters().items()}


def filesystem(path) -> str:
    """The type of the filesystem holding `path` (ext4, overlay, tmpfs, ...): write_bytes
    never counts a tmpfs."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1].replace("\\040", " ")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and \
                        len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def finish_job(result: dict) -> None:
    """The job's last act: its result as one JSON line on stdout, then leave at once (no
    interpreter teardown, which writes nothing we want and has aborted now and then in torch's
    thread pools after a pipeline run)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
