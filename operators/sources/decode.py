"""The source: decode any audio FFmpeg reads into stereo float32 chunks at 44.1 kHz, streaming.

Stream time counts output samples from the first decoded one, and stays true to the container's
clock: holes in the audio are filled with silence, corrupt packets are skipped with a warning.
`origin_sec` maps stream time back to the container's timeline, for cutting clips.

A decoder can also start at a later stream sample (resuming an interrupted run) and give the very
samples an uninterrupted decode gives from there on. Two things make that exact. The codec needs
a few frames after a seek to settle, so decoding begins a second or two early. And the
resampler's output depends on the input sample it began at, so the restart starts it where the
first run's resampler passed through the same phase: a multiple of input_rate / gcd(input_rate,
44100) input samples after that one began. Timestamps alone cannot place a sample (Matroska's are
whole milliseconds), so the first run notes `sync_points` as it goes, each a frame's exact
timestamp with the count of input samples its resampler had taken before that frame; a restart
finds that frame again by its timestamp.

Only a few decoders give after a seek the very samples they give in a decode from the start:
SEEKS_EXACTLY lists those, each proven by a test with noisy, low-bitrate input (tests/test_resume
.py). Others carry state across every frame since they opened, which a seek does not restore:
AAC's noise substitution (PNS) and AC-3's dither draw from a generator that runs from the first
frame, and Opus in its SILK modes, MP2 and WMA differ after a seek too. Their samples after a
seek are other ones, and through the whole stream's dB reference every later window moves. So
for any decoder not listed a restart feeds the decoder every packet from the stream's start,
leaving its state the uninterrupted decode's, but resamples and hands on nothing before the
sync point: the resampler begins there in phase, as after a seek. The output is then
bit-identical to an uninterrupted decode's, and decoding alone runs near 900x realtime for
48 kHz AAC (benchmarks/resume_cost.py: 7.6 s to resume 1:55:00 into a file).
"""
import logging
import os
import math
import threading
from fractions import Fraction

import av
import numpy as np

from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.grid import AUDIO_RATE
from highlightsense.engine.operator import Source, SourceInfo
from highlightsense.engine.timecode import hms

log = logging.getLogger("highlightsense")


def is_cover_art(stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


# Tags are text the file claims is UTF-8; a damaged or odd one must not stop the decode. PyAV
# before 19 decodes them strictly unless told otherwise; 19 dropped the option and always decodes
# with surrogateescape, whose lone surrogates `tag` turns into U+FFFD like "replace" did.
_OPEN_OPTIONS = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}


def tag(stream, key: str) -> str | None:
    """A stream's metadata tag as printable text (U+FFFD where its bytes were not UTF-8)."""
    value = stream.metadata.get(key)
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if value else value


def open_media(path) -> av.container.InputContainer:
    """Open a file for reading, with the user-facing errors for missing and unreadable files.

    A readable file-like object (bytes arriving over the network) is opened as it is; its str()
    names it in messages."""
    if not hasattr(path, "read"):
        path = str(path)
        if not os.path.exists(path):
            raise HighlightSenseError(f"no such file: {path}")
        if os.path.isdir(path):
            raise HighlightSenseError(f"{path} is a folder; give a media file")
    try:
        return av.open(path, **_OPEN_OPTIONS)
    except av.FFmpegError as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise HighlightSenseError(
            f"{path} is not a media file FFmpeg can read ({reason})") from None


def audio_stream(container, path, stream_index: int | None, flag: str = "--audio-stream"):
    """The audio stream to use: the first, or the `stream_index`-th audio stream (which
    `flag` names, for messages)."""
    streams = list(container.streams.audio)
    if not streams:
        raise HighlightSenseError(f"{path} has no audio stream; give a file with audio")
    index = 0 if stream_index is None else stream_index
    if not 0 <= index < len(streams):
        listing = "; ".join(f"{i}: {_describe(s)}" for i, s in enumerate(streams))
        raise HighlightSenseError(
            f"{path} has no audio stream {stream_index}; its audio streams are {listing} "
            f"({flag} counts audio streams only, from 0)")
    if streams[index].codec_context is None:
        raise HighlightSenseError(
            f"{path}: audio stream {index} is in a codec FFmpeg cannot decode; "
            f"convert it or choose another with {flag}")
    return streams[index]


def _describe(stream) -> str:
    cc = stream.codec_context
    lang = tag(stream, "language")
    text = f"{cc.name} {cc.sample_rate} Hz {cc.channels} ch" if cc else "unknown codec"
    return f"{text} ({lang})" if lang else text


def _seconds(value, time_base) -> float | None:
    return float(value * time_base) if value is not None and time_base else None


def probe(path) -> dict:
    """What a media file holds: format, duration and its streams."""
    with open_media(path) as container:
        streams = []
        for s in container.streams:
            if s.codec_context is None:  # no decoder in this FFmpeg build
                streams.append({"index": s.index, "type": s.type, "codec": None})
                continue
            entry = {"index": s.index, "type": s.type, "codec": s.codec_context.name,
                     "start_sec": _seconds(s.start_time, s.time_base),
                     "duration_sec": _seconds(s.duration, s.time_base)}
            if s.type == "audio":
                entry.update(rate=s.codec_context.sample_rate, channels=s.codec_context.channels)
            if s.type == "video":
                entry.update(width=s.codec_context.width, height=s.codec_context.height,
                             cover_art=is_cover_art(s))
            streams.append(entry)
        return {
            "path": str(path),
            "format": container.format.name,
            "start_sec": _seconds(container.start_time, Fraction(1, av.time_base)),
            "duration_sec": _seconds(container.duration, Fraction(1, av.time_base)),
            "streams": streams,
        }


SYNC_EVERY_SEC = 5.0  # how often a decode notes a sync point
# A restart seeks this far before its sync point's frame, so the codec has settled when it
# arrives, and begins at a sync point at least RESAMPLER_SETTLE output samples before its start.
SEEK_BACK_SEC = 2.0
RESAMPLER_SETTLE = AUDIO_RATE // 10
# Decoders (AVCodec names) that restart exactly after a seek: each one is in
# tests/test_resume.py::test_decoders_allowed_to_seek_restart_exactly. Any other restarts by
# decoding from the stream's start (see the module).
SEEKS_EXACTLY = frozenset({"pcm_s16le", "pcm_s24le", "pcm_f32le", "flac", "alac", "mp3float",
                           "vorbis"})


class FileDecoder(Source):
    """What the decoders of a file share: iterated once (their _chunks()), closing the file at
    the end. Reads hold `_lock`; close() never waits for a read blocked in another thread (a
    stalled pipe): it marks `_closing`, and the read closes the container when it returns."""

    container = None
    _iterated = False

    def __init__(self):
        self._lock = threading.Lock()
        self._closing = False

    def _chunks(self):
        raise NotImplementedError

    def __iter__(self):
        if self._iterated:
            raise RuntimeError(f"{type(self).__name__} can be iterated only once")
        self._iterated = True
        try:
            yield from self._chunks()
        finally:
            self.close()

    def close(self) -> None:
        self._closing = True
        if not self._lock.acquire(blocking=False):
            return
        try:
            container, self.container = self.container, None
        finally:
            self._lock.release()
        if container is not None:
            container.close()


class AudioDecoder(FileDecoder):
    """Yields AudioChunk(float32 (2, n), 44100 Hz, start) of about chunk_sec each, contiguous.

    start_sample: begin at this stream sample (a restart), given the `sync_points` the first
    run's decoder noted (see the module).
    """

    name = "decode"

    def __init__(self, path, stream_index: int | None = None, chunk_sec: float = 1.0,
                 start_sample: int = 0, sync_points=None):
        super().__init__()
        self.path = str(path)
        self.chunk_samples = max(1, round(chunk_sec * AUDIO_RATE))
        # Its sync points: (frame pts, input samples its resampler had taken before it, stream
        # sample the resampler began at), one about every SYNC_EVERY_SEC: where restarts begin.
        self.info = SourceInfo(path=self.path, start_sample=start_sample,
                               sync_points=[tuple(p) for p in sync_points or ()])
        self.start_sample = start_sample
        self.decoded_from = 0  # the stream sample resampling began at (restarts begin early)
        # How a restart began: "seek", "skip" (decoded from the start, resampled from a sync
        # point) or "full" (decoded and resampled from the start); None when not restarted.
        self.restarted_by = None
        self._taken = 0  # input samples the current resampler has taken
        self._resampler_out = 0  # stream sample the current resampler began at
        self._next_sync = 0  # input samples (of this resampler) at which to note the next one
        self._out = 0  # samples handed on to the chunker (resampled, plus silence)
        self._incident = None  # (packets, stream time) of corrupt packets not yet reported
        self.container = open_media(path)
        try:
            self._stream_index = stream_index
            self.stream = audio_stream(self.container, self.path, stream_index)
            self._describe_input()
            self._frames = self._decoded_frames()
            # Decode the first frame now: it fixes origin_sec, and an empty file fails here.
            self._first = next(self._frames, None)
            if self._first is None:
                raise HighlightSenseError(f"{self.path} contains no audio samples")
            t = _seconds(self._first.pts, self._first.time_base or self.stream.time_base)
            self.info.origin_sec = t if t is not None else _seconds(self.stream.start_time,
                                                               self.stream.time_base) or 0.0
            self.info.duration_sec = self._duration()
        except BaseException:
            self.close()
            raise

    def _describe_input(self):
        cc = self.stream.codec_context
        self.info.codec = cc.name
        self.input_rate = cc.sample_rate
        self.input_channels = cc.channels
        self.info.has_video = any(not is_cover_art(v) for v in self.container.streams.video)
        self.audio_streams = [
            {"index": i, "stream": a.index, "codec": cc and cc.name,
             "rate": cc and cc.sample_rate, "channels": cc and cc.channels,
             "language": tag(a, "language")}
            for i, a in enumerate(self.container.streams.audio)
            for cc in [a.codec_context]]

    def _duration(self) -> float | None:
        """Seconds of stream time to expect: up to the container's end when it is known (a .ts
        only estimates its streams' durations), else the stream's own duration."""
        c = self.container
        if c.duration:
            end = (c.start_time or 0) / av.time_base + c.duration / av.time_base
            return max(0.0, end - self.info.origin_sec)
        return _seconds(self.stream.duration, self.stream.time_base)

    # -- decoding ---------------------------------------------------------------------------------

    def _stream_time(self, packet) -> float:
        t = _seconds(packet.pts, packet.time_base)
        if t is None:
            return self._out / AUDIO_RATE
        return t - (self.info.origin_sec or 0.0)

    def _decoded_frames(self):
        """Decoded frames of the stream. A packet FFmpeg cannot decode is skipped and counted; a
        run of them is one incident, reported with the next good frame (self._incident)."""
        bad, bad_at = 0, 0.0
        retries = 0
        packets = self.container.demux(self.stream)
        while True:
            # The pipeline may close() from another thread while a read is blocked here (a stalled
            # pipe): close() then only marks it, and the read closes the container on return.
            with self._lock:
                if self.container is None:
                    return
                try:
                    packet = next(packets, None)
                    retries = 0
                except av.FFmpegError as e:
                    if isinstance(e, BlockingIOError) and retries < 100:  # "try again"
                        retries += 1
                        packets = self.container.demux(self.stream)
                        continue
                    # As ffmpeg itself does: keep what was read, and say where the file stopped.
                    log.warning("%s: cannot read past %s (%s); the rest of the file is left out",
                                self.path, hms(self._out / AUDIO_RATE), e.strerror or e)
                    packet = None
                if self._closing:
                    self.container.close()
                    self.container = None
                    return
                if packet is None:
                    break
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    self.info.corrupt_packets += 1
                    if not bad:
                        bad_at = self._stream_time(packet)
                    bad += 1
                    continue
            if frames and bad:
                self._incident = (bad, bad_at)
                bad = 0
            yield from frames
        if bad:
            self._incident = (bad, bad_at)
            self._report()

    def _report(self, silence: int = 0):
        """One warning line per incident: corrupt packets skipped, audio missing, or both."""
        incident, self._incident = self._incident, None
        if incident:
            count, at = incident
            what = "a corrupt audio packet" if count == 1 else f"{count} corrupt audio packets"
            fill = f"; filled {silence / AUDIO_RATE:.3f} s with silence" if silence else ""
            log.warning("%s: skipped %s at %s%s", self.path, what, hms(at), fill)
        elif silence:
            log.warning("%s: %.3f s of audio missing at %s, filled with silence", self.path,
                        silence / AUDIO_RATE, hms(self._out / AUDIO_RATE))

    def _chunks(self):
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._emitted = self.start_sample  # samples already yielded as chunks, or skipped
        resampler = None
        expected = None  # container time where the next frame should start
        frame, frames = self._first, self._frames
        self._first = None
        if self.start_sample > 0:
            frame, frames, resampler, expected = self._restart(frame, frames)
        while frame is not None:
            t = _seconds(frame.pts, frame.time_base or self.stream.time_base)
            dur = frame.samples / frame.sample_rate
            silence = 0
            if t is not None and expected is not None:
                tolerance = max(0.002, min(0.010, dur / 2))
                if t - expected > tolerance:
                    # Flush so the silence lands after every sample before the hole.
                    yield from self._take(self._resample(resampler, None))
                    resampler = None
                    silence = max(0, round((t - self.info.origin_sec) * AUDIO_RATE) - self._out)
                    self._report(silence)
                    yield from self._silence(silence)
            if self._incident:
                self._report()
            if resampler is not None and _input_format(frame) != self._input_format:
                # The input's format changed mid-stream: start a new resampler. (PyAV's resampler
                # passes frames through unchecked when the first one needed no conversion.)
                yield from self._take(self._resample(resampler, None))
                resampler = None
            try:
                if resampler is None:
                    resampler = self._new_resampler(frame)
                out = self._resample(resampler, frame)
            except av.FFmpegError:
                # A frame FFmpeg cannot convert (a damaged header can claim 45 channels): skip it
                # as a corrupt packet; the silence filled in for it keeps the times true.
                self.info.corrupt_packets += 1
                count, at = self._incident or (
                    0, self._out / AUDIO_RATE if t is None else t - self.info.origin_sec)
                self._incident = (count + 1, at)
                resampler = None
                frame = next(frames, None)
                continue
            yield from self._take(out)
            expected = (t if t is not None else expected or 0.0) + dur
            frame = next(frames, None)
        if resampler is not None:
            yield from self._take(self._resample(resampler, None))
        if self._pending_n:
            yield self._emit(self._pending_n)

    def _new_resampler(self, frame, taken: int = 0):
        self._taken, self._next_sync, self._resampler_out = taken, taken, self._out
        # Mono goes through as mono and is copied to both channels later: FFmpeg's upmix would
        # lower it by 3 dB.
        self._mono = frame.layout.nb_channels == 1
        self._input_format = _input_format(frame)
        return av.AudioResampler(format="fltp", layout="mono" if self._mono else "stereo",
                                 rate=AUDIO_RATE)

    # -- restarting -------------------------------------------------------------------------------

    def _restart(self, frame, frames):
        """Set up decoding so that the output from start_sample on is exactly an uninterrupted
        decode's, given the first frame and the rest. Returns (frame, frames, resampler,
        expected) for _chunks."""
        usable = [p for p in self.info.sync_points
                  if p[2] + p[1] * AUDIO_RATE // self.input_rate
                  <= self.start_sample - RESAMPLER_SETTLE]
        # A seek needs room before the sync frame for the codec to settle.
        seekable = [p for p in usable[-3:] if self.info.codec in SEEKS_EXACTLY
                    and self._seek_sec(p[0]) > self.info.origin_sec]
        for pts, taken, began in reversed(seekable):  # a few tries, latest first
            found = self._seek_to_sync(pts, taken, began)
            if found is not None:
                self.restarted_by = "seek"
                return found
        if usable and not seekable:  # nothing was seeked: the frames are still the first ones
            pts, taken, began = usable[-1]
            log.info("%s: decoding %s from the start again (its decoder's state depends on "
                     "every frame before), resampling from %s", self.path, self.info.codec,
                     hms((began + taken * AUDIO_RATE // self.input_rate) / AUDIO_RATE))
            found = self._skip_to_sync(frame, frames, usable)
            if found is not None:
                self.restarted_by = "skip"
                return found
        return self._from_the_start()

    def _seek_sec(self, pts: int) -> float:
        return float(pts * self.stream.time_base) - SEEK_BACK_SEC

    def _from_the_start(self):
        """Decode from the first frame again, dropping what comes before start_sample."""
        with self._lock:
            self.container.close()
            self.container = open_media(self.path)
            self.stream = audio_stream(self.container, self.path, self._stream_index)
        frames = self._decoded_frames()
        self.decoded_from = 0
        self.restarted_by = "full"
        return next(frames, None), frames, None, None

    def _skip_to_sync(self, frame, frames, sync_points):
        """Decode every frame from the first, resampling none, up to the last of `sync_points`.
        The frames are the first run's, so each sync point's frame is found again in turn: by its
        timestamp, and where it shares a resampler with the one before, by the input samples
        between them too (timestamps can repeat where a stream's clock jumped back). None when
        one is missing (then the caller decodes everything again)."""
        rate = self.input_rate
        points = iter(sync_points)
        target, previous, since = next(points), None, 0
        while frame is not None:
            if self._incident:
                self._report()
            if frame.pts == target[0] and (
                    previous is None or target[2] != previous[2] or target[1] <= previous[1]
                    or since == target[1] - previous[1]):
                previous, since, target = target, 0, next(points, None)
                if target is None:
                    break
            since += frame.samples
            frame = next(frames, None)
        if frame is None or frame.sample_rate != rate:
            return None
        _, taken, began = previous
        return self._begin_in_phase(frame, frames, taken, began)

    def _seek_to_sync(self, pts: int, taken: int, began: int):
        rate = self.input_rate
        time_base = self.stream.time_base
        with self._lock:
            self.container.seek(int(self._seek_sec(pts) * av.time_base), backward=True)
        frames = self._decoded_frames()
        frame = next(frames, None)
        if frame is None or frame.pts is None or frame.pts >= pts:
            return None  # the seek landed on or past the sync frame: the codec may not settle
        # Timestamps finer than a sample place any frame exactly (a seek into PCM need not
        # land on the first run's frame edges); coarser ones only name the sync frame itself.
        exact = time_base <= Fraction(1, rate)
        while frame is not None and frame.pts != pts:
            if frame.pts is None or (frame.pts > pts and not exact):
                return None  # the sync frame is not there (a corrupt packet?)
            if frame.pts > pts:
                ahead = (frame.pts - pts) * time_base * rate
                if ahead.denominator != 1:
                    return None
                taken += int(ahead)
                break
            frame = next(frames, None)
        if frame is None or frame.sample_rate != rate:
            return None
        return self._begin_in_phase(frame, frames, taken, began)

    def _begin_in_phase(self, frame, frames, taken: int, began: int):
        """From `frame`, which the first run's resampler (begun at stream sample `began`) took
        after `taken` input samples: begin the resampler at the first input sample in phase
        with that one's."""
        rate = self.input_rate
        step = rate // math.gcd(rate, AUDIO_RATE)  # input samples per whole number of outputs
        begin = -(-taken // step) * step
        while frame is not None and taken + frame.samples <= begin:
            taken += frame.samples
            frame = next(frames, None)
        if frame is None or frame.sample_rate != rate or frame.pts is None:
            return None
        skip = begin - taken
        t = _seconds(frame.pts, frame.time_base or self.stream.time_base) + skip / rate
        frame = _drop_leading(frame, skip)
        self._out = began + begin // step * (AUDIO_RATE // math.gcd(rate, AUDIO_RATE))
        self.decoded_from = self._out
        resampler = self._new_resampler(frame, taken=begin)
        self._resampler_out = began
        return frame, frames, resampler, t

    def _resample(self, resampler, frame) -> list[np.ndarray]:
        if resampler is None:
            return []
        arrays = [f.to_ndarray() for f in resampler.resample(frame) if f is not None]
        if frame is not None:
            self._note_sync(frame)
            self._taken += frame.samples
        if self._mono:
            arrays = [np.repeat(a, 2, axis=0) for a in arrays]
        return arrays

    def _note_sync(self, frame) -> None:
        if self._taken < self._next_sync or frame.pts is None:
            return
        if not self.info.sync_points or frame.pts > self.info.sync_points[-1][0]:
            self.info.sync_points.append((frame.pts, self._taken, self._resampler_out))
        self._next_sync = self._taken + round(SYNC_EVERY_SEC * frame.sample_rate)

    def _silence(self, n):
        self.info.gaps_filled_sec += n / AUDIO_RATE
        while n > 0:  # in pieces, so a long hole does not allocate its whole length
            piece = min(n, self.chunk_samples)
            yield from self._take([np.zeros((2, piece), dtype=np.float32)])
            n -= piece

    def _take(self, arrays):
        """Queue resampled audio and yield every full chunk it completes (a restart drops what
        comes before its start sample)."""
        for a in arrays:
            if a.shape[1] == 0:
                continue
            before, self._out = self._out, self._out + a.shape[1]
            if self._out <= self.start_sample:
                continue
            if before < self.start_sample:
                a = a[:, self.start_sample - before:]
            self._pending.append(a)
            self._pending_n += a.shape[1]
            while self._pending_n >= self.chunk_samples:
                yield self._emit(self.chunk_samples)

    def _emit(self, n) -> AudioChunk:
        block = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending,
                                                                               axis=1)
        samples = np.ascontiguousarray(block[:, :n], dtype=np.float32)
        rest = block[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self._pending_n = rest.shape[1]
        chunk = AudioChunk(samples=samples, rate=AUDIO_RATE, start=self._emitted)
        self._emitted += n
        return chunk



def _input_format(frame) -> tuple:
    return frame.format.name, frame.layout.name, frame.sample_rate


def _drop_leading(frame, n: int):
    """The frame without its first n samples (a new frame; timestamps are not needed after)."""
    if n == 0:
        return frame
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    data = data[:, n:] if frame.format.is_planar else data[:, n * channels:]
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name,
                                     layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    return out
