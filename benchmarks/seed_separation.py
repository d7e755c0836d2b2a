"""The seed notebook's way of separating, kept for benchmarks: split the input into 60 s WAV
chunks (16-bit, 44.1 kHz, stereo; PyAV here where the seed ran ffmpeg), run
`python -m demucs --two-stems vocals` in a new process once per chunk (the model reloaded each
time, the CLI's defaults: shifts 1, overlap 0.25), then join the chunks' vocals.wav and
no_vocals.wav into vocals.wav and game.wav. Every step goes through the disk, as in the seed.
"""
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import av
import numpy as np

RATE = 44100


@dataclass
class SeedSeparation:
    stems: Optional[np.ndarray]  # float32 (2 stems: voice, game; 2 channels; n), if loaded
    bytes_written: int  # chunk WAVs, demucs's outputs and the joined WAVs
    wall_sec: float
    chunks: int
    peak_rss_mb: float  # the largest demucs process's peak resident memory
    voice_wav: Path
    game_wav: Path


class _WavWriter:
    """16-bit stereo WAV at 44.1 kHz, written block by block."""

    def __init__(self, path):
        self.container = av.open(str(path), "w", format="wav")
        self.stream = self.container.add_stream("pcm_s16le", rate=RATE)
        self.stream.layout = "stereo"
        self.written = 0

    def write(self, block: np.ndarray) -> None:
        """block: int16 samples shaped (n, 2)."""
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block).reshape(1, -1),
                                           format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = self.written
        self.written += block.shape[0]
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()


def _pcm_blocks(path):
    """Any media file's first audio stream as int16 (n, 2) blocks at 44.1 kHz (what the seed's
    `ffmpeg -acodec pcm_s16le -ar 44100 -ac 2` gives)."""
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=RATE)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                yield out.to_ndarray().reshape(-1, 2)
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1, 2)


def split_into_wavs(path, out_dir, chunk_sec: float = 60) -> List[Path]:
    """chunk_000.wav, chunk_001.wav, ... of `chunk_sec` each (the last one shorter)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = int(chunk_sec * RATE)
    files, writer = [], None
    for block in _pcm_blocks(path):
        while len(block):
            if writer is None:
                files.append(out_dir / f"chunk_{len(files):03d}.wav")
                writer = _WavWriter(files[-1])
            take = min(size - writer.written, len(block))
            writer.write(block[:take])
            block = block[take:]
            if writer.written == size:
                writer.close()
                writer = None
    if writer is not None:
        writer.close()
    return files


def read_wav(path) -> np.ndarray:
    """A stereo WAV as float32 (2, n)."""
    blocks = list(_pcm_blocks(path))
    pcm = np.concatenate(blocks) if blocks else np.zeros((0, 2), np.int16)
    return (pcm.T.astype(np.float32) / 32768).copy()


def _join(parts, path) -> None:
    writer = _WavWriter(path)
    for part in parts:
        for block in _pcm_blocks(part):
            writer.write(block)
    writer.close()


def _run_watched(command, env, failure: str) -> float:
    """Run a process to its end; return its peak RSS in MB, read from /proc while it runs
    (getrusage's children figure would count the parent's pages shared at fork)."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        peak = 0.0
        while process.poll() is None:
            try:
                with open(f"/proc/{process.pid}/status") as f:
                    hwm = next((line for line in f if line.startswith("VmHWM")), None)
                peak = max(peak, int(hwm.split()[1]) / 1024) if hwm else peak
            except OSError:
                pass  # it just ended
            time.sleep(0.2)
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{failure}: {errors.read().decode(errors='replace')[-2000:]}")
    return peak


def seed_separate(input_path, repo, name: str, work_dir, device: str = "cpu",
                  chunk_sec: float = 60, load: bool = True, env=None) -> SeedSeparation:
    """Separate `input_path` the seed's way with model `name` from the demucs repo folder `repo`
    (e.g. a `.th` written with model.separator.save_package). `env` is the demucs processes'
    environment (thread counts, for instance)."""
    started = time.perf_counter()
    work_dir = Path(work_dir)
    chunks = split_into_wavs(input_path, work_dir / "chunks_temp", chunk_sec)
    out_dir = work_dir / "demucs_temp"
    peak = 0.0
    for chunk in chunks:
        command = [sys.executable, "-m", "demucs", "--two-stems", "vocals", "--repo", str(repo),
                   "-n", name, "-d", device, "--jobs", "1", "-o", str(out_dir), str(chunk)]
        peak = max(peak, _run_watched(command, env, f"demucs failed on {chunk.name}"))
    folders = [out_dir / name / chunk.stem for chunk in chunks]
    voice_wav, game_wav = work_dir / "vocals.wav", work_dir / "game.wav"
    _join([f / "vocals.wav" for f in folders], voice_wav)
    _join([f / "no_vocals.wav" for f in folders], game_wav)
    wall = time.perf_counter() - started
    written = [*chunks, voice_wav, game_wav] + [f / s for f in folders
                                                for s in ("vocals.wav", "no_vocals.wav")]
    stems = np.stack([read_wav(voice_wav), read_wav(game_wav)]) if load else None
    return SeedSeparation(stems, sum(p.stat().st_size for p in written), wall, len(chunks),
                          peak, voice_wav, game_wav)
