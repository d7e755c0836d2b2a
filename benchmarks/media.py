"""Write generated audio (and an optional tiny video) into real media files with PyAV, streaming.

The content comes from elsewhere (benchmarks.synth, tests) as blocks of float32 samples; this
module only chooses codecs and containers, encodes and muxes, one block at a time, so an hour of
audio never sits in memory. A few extras make broken or odd files for tests: dropped packets
(gaps), a container start offset, extra audio streams, video without audio, corrupt bytes.
"""
import itertools
import math
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np

LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}

# Audio codec by file extension, first one this FFmpeg build has wins.
_CODECS_BY_EXT = {
    ".mp4": ["aac"],
    ".m4a": ["aac"],
    ".mov": ["aac"],
    ".mkv": ["aac"],
    ".ts": ["aac"],
    ".wav": ["pcm_s16le"],
    ".flac": ["flac"],
    ".mp3": ["libmp3lame", "mp3"],
    ".webm": ["libopus", "opus"],
    ".opus": ["libopus", "opus"],
    ".ogg": ["libopus", "opus"],
}
_OPUS = ("libopus", "opus")

# Frame-number stamp on the video: 16 bars across the top, white for 1, black for 0.
_STAMP_BITS = 16
_STAMP_ROWS = 24


def default_audio_codec(path) -> str:
    ext = Path(path).suffix.lower()
    for name in _CODECS_BY_EXT.get(ext, ["aac"]):
        if name in av.codecs_available:
            return name
    raise ValueError(f"no audio encoder for {ext} in this FFmpeg build")


def _codec_rate(codec: str, rate: int) -> int:
    """The rate to encode at: the asked one when the codec takes it, else the closest it takes."""
    if codec in _OPUS:
        return 48000  # Opus always decodes at 48 kHz; encode there too
    rates = av.codec.Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    above = [r for r in rates if r >= rate]
    return min(above) if above else max(rates)


class _AudioTrack:
    """One audio stream being written: blocks in, packets out (the encoder resamples)."""

    def __init__(self, container, codec, rate, channels, sample_fmt, options=None):
        if channels not in LAYOUTS:
            raise ValueError(f"channels must be one of {sorted(LAYOUTS)}, not {channels}")
        self.rate = rate
        self.channels = channels
        self.layout = LAYOUTS[channels]
        self.stream = container.add_stream(codec, rate=_codec_rate(codec, rate))
        self.stream.layout = self.layout
        if sample_fmt:
            self.stream.format = sample_fmt
        if codec == "aac":
            self.stream.options = {"aac_coder": "fast"}  # several times faster; fine for tests
        self.stream.options = {**self.stream.options, **(options or {})}
        self.written = 0  # samples at `rate` given so far

    def encode(self, block) -> list:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"blocks must be shaped ({self.channels}, n), not {block.shape}")
        if block.shape[1] == 0:
            return []
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.time_base = Fraction(1, self.rate)
        frame.pts = self.written
        self.written += block.shape[1]
        return self.stream.encode(frame)

    def flush(self) -> list:
        return self.stream.encode(None)


class _VideoTrack:
    """A tiny libx264 stream: each frame's gray level moves and its number is stamped on top."""

    def __init__(self, container, size, fps, gop, bframes):
        self.fps = fps
        self.width, self.height = size
        self.stream = container.add_stream("libx264", rate=fps)
        self.stream.width = self.width
        self.stream.height = self.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.gop_size = gop
        # Keyframes exactly every gop frames (no scene cuts); B-frames only when asked.
        self.stream.options = {
            "preset": "ultrafast" if not bframes else "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}",
        }
        self.count = 0

    def encode_until(self, seconds: float) -> list:
        """Encode the frames whose start time is before `seconds`."""
        packets = []
        while self.count < math.ceil(seconds * self.fps - 1e-9):
            packets += self.stream.encode(self._frame(self.count))
            self.count += 1
        return packets

    def flush(self) -> list:
        return self.stream.encode(None)

    def _frame(self, index):
        h, w = self.height, self.width
        yuv = np.full((h * 3 // 2, w), 128, dtype=np.uint8)
        yuv[:h] = 40 + (index * 7) % 150
        bar = w // _STAMP_BITS
        for bit in range(_STAMP_BITS):
            yuv[:_STAMP_ROWS, bit * bar:(bit + 1) * bar] = 235 if (index >> bit) & 1 else 16
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = index
        frame.time_base = Fraction(1, self.fps)
        return frame


def read_frame_number(frame) -> int:
    """The number stamped on a video frame written by write_media (survives lossy coding)."""
    gray = frame.to_ndarray(format="gray")
    bar = gray.shape[1] // _STAMP_BITS
    top = gray[2:_STAMP_ROWS - 2].astype(np.float32)
    return sum(1 << bit for bit in range(_STAMP_BITS)
               if top[:, bit * bar + 2:(bit + 1) * bar - 2].mean() > 128)


def _in_ranges(t: float, ranges) -> bool:
    return any(a <= t < b for a, b in ranges)


def write_media(path, blocks: Iterable[np.ndarray], rate: int = 44100, channels: int = 2,
                audio_codec: str | None = None, video: bool = False, video_size=(160, 90),
                fps: int = 10, gop: int | None = None, sample_fmt: str | None = None, *,
                more_audio: Sequence[Iterable[np.ndarray]] = (),
                drop: Sequence[tuple[float, float]] = (), start_sec: float = 0.0,
                audio: bool = True, video_sec: float | None = None, bframes: int = 0,
                audio_options: dict | None = None) -> Path:
    """Encode `blocks` (float32, shaped (channels, n) at `rate`) into the file at `path`.

    Codec and container follow the extension unless `audio_codec` is given. With `video` a small
    libx264 stream as long as the audio is added, a keyframe every `gop` frames (default 2 s).
    Extras for tests:
      more_audio: block iterables for more audio streams (same rate, channels and codec);
      drop: (start, end) second ranges whose audio packets are left out, leaving gaps;
      start_sec: shift every timestamp, so the container timeline starts there;
      audio=False with video_sec: a video-only file of that length;
      bframes: B-frames in the video (reordered: dts before pts), as real recordings have;
      audio_options: encoder options (e.g. {"aac_pns": "0"}: no noise substitution, whose
        decoded noise depends on every frame before, so a decode after a seek differs).
    """
    path = Path(path)
    codec = audio_codec or default_audio_codec(path)
    shift = Fraction(start_sec).limit_denominator(1_000_000)
    # FFmpeg's command line muxes with max_delay 0.7 s, so its .ts files start at 1.4 s: same here.
    options = {"max_delay": "700000"} if path.suffix.lower() == ".ts" else {}
    options["fflags"] = "+bitexact"  # no random ids (Matroska, Ogg): the same blocks, the same bytes
    with av.open(str(path), "w", container_options=options) as container:
        tracks = []
        if audio:
            tracks.append(_AudioTrack(container, codec, rate, channels, sample_fmt, audio_options))
            tracks += [_AudioTrack(container, codec, rate, channels, sample_fmt)
                       for _ in more_audio]
        vtrack = _VideoTrack(container, video_size, fps, gop or 2 * fps, bframes) if video else None
        container.start_encoding()  # writes the header even when no packet follows

        def mux(packets, is_audio):
            for packet in packets:
                if packet.pts is not None and is_audio and drop:
                    if _in_ranges(float(packet.pts * packet.time_base), drop):
                        continue
                if shift:
                    offset = int(shift / packet.time_base)
                    packet.pts = packet.pts + offset if packet.pts is not None else None
                    packet.dts = packet.dts + offset if packet.dts is not None else None
                container.mux(packet)

        if tracks:
            # All audio streams advance together, so the muxer interleaves them cheaply.
            for group in itertools.zip_longest(blocks, *more_audio):
                for track, block in zip(tracks, group):
                    if block is not None:
                        mux(track.encode(block), True)
                if vtrack:
                    mux(vtrack.encode_until(tracks[0].written / rate), False)
            for track in tracks:
                mux(track.flush(), True)
        if vtrack:
            seconds = tracks[0].written / rate if tracks else (video_sec or 0.0)
            mux(vtrack.encode_until(seconds), False)
            mux(vtrack.flush(), False)
    return path


def blocks_of(signal: np.ndarray, block: int = 44100) -> Iterable[np.ndarray]:
    """Split an in-memory (channels, n) signal into blocks, for short test signals."""
    for i in range(0, signal.shape[-1], block):
        yield signal[:, i:i + block]


def tone(seconds: float, freq: float = 440.0, rate: int = 44100, channels: int = 2,
         amp: float = 0.5, block: int = 44100) -> Iterable[np.ndarray]:
    """A sine tone as blocks, generated block by block (any length, constant memory)."""
    total = int(round(seconds * rate))
    for i in range(0, total, block):
        n = min(block, total - i)
        t = (np.arange(i, i + n) / rate).astype(np.float64)
        wave = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        yield np.repeat(wave[None, :], channels, axis=0)


def beeps(seconds: float, at: Sequence[float], rate: int = 44100, channels: int = 2,
          beep_sec: float = 0.05, block: int = 44100) -> Iterable[np.ndarray]:
    """A quiet 220 Hz bed with loud 1 kHz beeps starting at the times `at`: marks to find again
    after decoding or cutting, to check where time went."""
    total = int(round(seconds * rate))
    starts = [int(round(t * rate)) for t in at]
    width = int(round(beep_sec * rate))
    for i in range(0, total, block):
        n = min(block, total - i)
        idx = np.arange(i, i + n)
        t = idx / rate
        wave = 0.05 * np.sin(2 * np.pi * 220 * t)
        for s in starts:
            inside = (idx >= s) & (idx < s + width)
            wave[inside] = 0.8 * np.sin(2 * np.pi * 1000 * (idx[inside] - s) / rate)
        yield np.repeat(wave.astype(np.float32)[None, :], channels, axis=0)


def find_beeps(samples: np.ndarray, rate: int = 44100, level: float = 0.4) -> list[float]:
    """Start times (s) of the beeps in decoded audio: where |x| first rises above `level`
    after at least 0.1 s below it."""
    loud = np.flatnonzero(np.abs(samples[0]) > level)
    if not len(loud):
        return []
    firsts = [loud[0]] + [b for a, b in zip(loud[:-1], loud[1:]) if b - a > 0.1 * rate]
    return [float(i / rate) for i in firsts]


def corrupt_bytes(path, out_path, offset_frac: float = 0.5, n_bytes: int = 2048,
                  seed: int = 0) -> Path:
    """Copy `path` to `out_path` with `n_bytes` random bytes written at `offset_frac` of it."""
    out_path = Path(out_path)
    shutil.copyfile(path, out_path)
    size = out_path.stat().st_size
    offset = int(size * offset_frac)
    noise = np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    with open(out_path, "r+b") as f:
        f.seek(offset)
        f.write(noise[:max(0, size - offset)])
    return out_path
