"""Cut highlight clips out of the source with PyAV.

By default packets are copied (no re-encode): fast and lossless, but a video clip must start on a
keyframe, so it starts at the keyframe at or before the requested time, and the result says where.
exact=True decodes and re-encodes (libx264 + AAC) just the requested span. Times are stream
seconds (AudioDecoder's, from its first sample); origin_sec maps them to the container's clock.
Each clip is written under a temporary name and renamed into place only once complete.
"""
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.files import create_new, temp_name
from highlightsense.engine.timecode import in_name
from highlightsense.operators.sources.decode import audio_stream, is_cover_art, open_media

# Audio codecs an .mp4 holds (and players play); others are re-encoded to AAC next to copied video.
MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}
MP4_VIDEO = {"h264", "hevc", "av1", "vp9", "mpeg4"}
# Audio-only clips keep the source's codec in its own container.
AUDIO_CONTAINERS = {"aac": ".m4a", "mp3": ".mp3", "opus": ".opus", "vorbis": ".ogg",
                    "alac": ".m4a"}
MUXERS = {".mp4": "mp4", ".m4a": "ipod", ".mp3": "mp3", ".flac": "flac", ".opus": "opus",
          ".ogg": "ogg", ".wav": "wav", ".mkv": "matroska"}
WAV_PCM = {"pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_f64le", "pcm_u8"}
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}  # kept as is; others go stereo
AUDIO_LEAD_SEC = 0.2  # exact mode decodes this much audio before the start, to prime the decoder
EPS = 1e-6


@dataclass
class ClipResult:
    path: Path
    start_sec: float  # stream time of the clip's first frame or sample, as written
    end_sec: float
    mode: str  # "copy", "copy+aac" (video copied, audio re-encoded) or "exact"
    note: str = ""


def _codec_name(stream) -> str:
    """The codec's name (mp3, not the decoder's mp3float)."""
    return stream.codec_context.codec.canonical_name


def _video_stream(container):
    return next((s for s in container.streams.video if not is_cover_art(s)), None)


def _plan(video, audio, exact: bool):
    """How to cut this source: (extension, "copy" or "exact", audio codec, note), where the
    audio codec is "copy", "aac", "flac" or None (no audio)."""
    acodec = _codec_name(audio) if audio is not None else None
    if video is not None:
        if exact:
            return ".mp4", "exact", "aac" if audio is not None else None, ""
        ext = ".mp4" if _codec_name(video) in MP4_VIDEO else ".mkv"
        if audio is None:
            return ext, "copy", None, ""
        if ext == ".mp4" and acodec not in MP4_AUDIO:
            note = f"mp4 cannot hold {acodec} audio, so it was re-encoded to AAC"
            return ext, "copy", "aac", note
        return ext, "copy", "copy", ""
    if acodec == "flac":
        # Copied FLAC frames keep their sample numbers and the header its length; re-encoding
        # is lossless and cheap, and starts exactly.
        note = "" if exact else "FLAC was re-encoded losslessly, to start exactly"
        return ".flac", "exact", "flac", note
    if exact:
        return ".m4a", "exact", "aac", ""
    if acodec in AUDIO_CONTAINERS:
        return AUDIO_CONTAINERS[acodec], "copy", "copy", ""
    if acodec in WAV_PCM:
        return ".wav", "copy", "copy", ""
    return ".m4a", "exact", "aac", f"{acodec} audio was re-encoded to AAC"


def _sec(value, time_base) -> Fraction:
    return value * time_base


def _packet_time(packet):
    if packet.pts is None:
        return None
    return _sec(packet.pts, packet.time_base)


def _packets_from_keyframe(inp, key, streams, t0: Fraction, t1: Fraction):
    """Seek and demux `streams`: returns (K, packets) where K is the time of the last keyframe of
    `key` at or before t0 (or the first one, when t0 precedes them all) and packets run from that
    keyframe until every stream has passed t1. Packets before K are left out. (None, None) when
    the file ends before t0."""
    floor = min(_sec(key.start_time or 0, key.time_base), Fraction(0))
    target, step = t0, Fraction(1)
    while True:
        inp.seek(math.floor(max(target, floor) / key.time_base), stream=key, backward=True)
        demux = inp.demux(streams)
        held, k, k_at, first_at, passed = [], None, None, None, False
        for packet in demux:
            t = _packet_time(packet)
            if t is None:  # flush packets at the end of the file
                continue
            # Every audio packet decodes on its own: each is a place to start.
            is_key = packet.stream is key and (packet.is_keyframe or key.type == "audio")
            if is_key and first_at is None:
                first_at = len(held)
            if is_key and t <= t0 + EPS:
                k, k_at = t, len(held)  # a later keyframe still at or before t0: start there
            held.append(packet)
            if packet.stream is key and t > t0 + EPS:
                passed = True
                break
        if k is None and target > floor:
            # The seek landed after t0 (.ts seeks loosely, by dts): go further back.
            target, step = max(target - step, floor), step * 2
            continue
        if k is None and first_at is None:
            return None, None  # no keyframe at all
        if not passed and max(_packet_time(p) + _sec(p.duration or 0, p.time_base)
                              for p in held if p.stream is key) <= t0 + EPS:
            return None, None  # t0 is at or after the end of the stream
        if not passed:
            demux = iter(())  # PyAV's demuxer must not be resumed once exhausted
        if k is None:  # t0 precedes every keyframe: start at the first one
            k_at = first_at
            k = _packet_time(held[k_at])
        # Nothing from before the keyframe: earlier packets of the other stream stay if timed
        # after it (files interleave loosely).
        held = ([p for p in held[:k_at] if p.stream is not key and _packet_time(p) >= k - EPS]
                + [p for p in held[k_at:] if _packet_time(p) >= k - EPS])
        return k, _until(held, demux, streams, t1)


def _until(held, demux, streams, t1):
    """The held packets, then the rest of the demuxer, keeping packets before t1 and stopping
    once every stream has shown one at or after t1."""
    done = set()
    for packet in _chain(held, demux):
        t = _packet_time(packet)
        if t is None:
            continue
        if t >= t1:
            done.add(packet.stream.index)
            if len(done) == len(streams):
                return
            continue
        yield packet


def _chain(first, rest):
    yield from first
    yield from rest


class _AudioWriter:
    """Re-encode decoded audio (AAC, or FLAC losslessly), keeping samples in [start, end)
    (container seconds); the clip's time 0 is `zero`."""

    def __init__(self, out, source, codec: str, zero: Fraction, start: Fraction, end: Fraction):
        cc = source.codec_context
        self.layout = LAYOUTS.get(cc.channels, "stereo")
        rates = av.codec.Codec(codec, "w").audio_rates
        self.rate = cc.sample_rate if not rates or cc.sample_rate in rates else 48000
        self.stream = out.add_stream(codec, rate=self.rate)
        self.stream.layout = self.layout
        if codec == "flac":  # keep 24-bit sources 24-bit
            self.stream.format = "s32" if cc.format and cc.format.bytes > 2 else "s16"
        # Float planar is what numpy trims; the encoder converts to its own format.
        self.resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self.out = out
        self.zero = zero
        self.first = round((start - zero) * self.rate)  # samples to keep, counted from zero
        self.last = round((end - zero) * self.rate)
        self.pos = None  # position of the next resampled sample, counted from zero
        self.end = None  # container time after the last sample written

    def add(self, frame):
        for r in self.resampler.resample(frame):
            if self.pos is None:  # place the first sample by its timestamp, then count
                t = _sec(r.pts, r.time_base) if r.pts is not None else self.zero
                self.pos = round((t - self.zero) * self.rate)
            samples = r.to_ndarray()
            a, b = self.pos, self.pos + samples.shape[1]
            self.pos = b
            lo, hi = max(a, self.first), min(b, self.last)
            if hi <= lo:
                continue
            kept = np.ascontiguousarray(samples[:, lo - a:hi - a])
            piece = av.AudioFrame.from_ndarray(kept, format="fltp", layout=self.layout)
            piece.sample_rate = self.rate
            piece.time_base = Fraction(1, self.rate)
            piece.pts = lo
            self.out.mux(self.stream.encode(piece))
            self.end = self.zero + Fraction(hi, self.rate)

    def close(self):
        self.add(None)
        self.out.mux(self.stream.encode(None))


class _VideoWriter:
    """Re-encode decoded video with libx264 from t0 to t1: the frame on screen at t0 becomes the
    clip's first frame, so the clip starts exactly at t0."""

    def __init__(self, out, source, t0: Fraction, t1: Fraction):
        cc = source.codec_context
        rate = source.average_rate or source.guessed_rate or 30
        self.stream = out.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = cc.width // 2 * 2, cc.height // 2 * 2  # yuv420p
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = source.time_base
        self.stream.options = {"preset": "veryfast", "crf": "18"}
        self.out, self.time_base = out, source.time_base
        self.t0, self.t1, self.frame_sec = t0, t1, 1 / Fraction(rate)
        self.held = None  # the latest frame at or before t0
        self.started = False
        self.end = None

    def add(self, frame):
        t = _sec(frame.pts, frame.time_base)
        if t <= self.t0 + EPS:
            self.held = frame
            return
        self._start()
        if t < self.t1:
            self._emit(frame, t)

    def _start(self):
        if not self.started and self.held is not None:
            self._emit(self.held, self.t0)
        self.started = True

    def _emit(self, frame, t):
        picture = frame.reformat(width=self.stream.width, height=self.stream.height,
                                 format="yuv420p")
        picture.pts = round((t - self.t0) / self.time_base)
        picture.time_base = self.time_base
        picture.pict_type = av.video.frame.PictureType.NONE  # x264 places its own keyframes
        self.out.mux(self.stream.encode(picture))
        self.end = t + self.frame_sec

    def close(self):
        self._start()  # a clip shorter than a frame still gets its frame
        self.out.mux(self.stream.encode(None))


def _decode(stream, packet):
    try:
        frames = stream.codec_context.decode(packet)
    except av.FFmpegError:  # a corrupt packet: skip it, as the decoder does
        if packet is None:
            raise
        return []
    for frame in frames:
        if frame.time_base is None:  # frames drained at the end come without one
            frame.time_base = stream.time_base
    return frames


def _write_copy(inp, out, video, audio, t0, t1, audio_codec):
    """Remux packets from the keyframe at or before t0 until t1 (audio re-encoded when
    audio_codec is not "copy"); returns the (start, end) written, container seconds."""
    key = video or audio
    streams = [s for s in (video, audio) if s is not None]
    k, packets = _packets_from_keyframe(inp, key, streams, t0, t1)
    if k is None:
        return None, None
    targets = {}
    if video is not None:
        targets[video.index] = out.add_stream_from_template(video)
    writer = None
    if audio is not None:
        if audio_codec == "copy":
            targets[audio.index] = out.add_stream_from_template(audio)
        else:
            writer = _AudioWriter(out, audio, audio_codec, zero=k, start=k, end=t1)
    end = k
    for packet in packets:
        if writer is not None and packet.stream is audio:
            for frame in _decode(audio, packet):
                writer.add(frame)
            continue
        end = max(end, _packet_time(packet) + _sec(packet.duration or 0, packet.time_base))
        shift = round(k / packet.time_base)  # the clip starts at 0
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        packet.stream = targets[packet.stream.index]
        out.mux(packet)
    if writer is not None:
        for frame in _decode(audio, None):
            writer.add(frame)
        writer.close()
        end = max(end, writer.end or k)
    return k, min(end, t1)


def _write_exact(inp, out, video, audio, t0, t1, audio_codec):
    """Decode and re-encode exactly [t0, t1); returns the (start, end) written."""
    key = video or audio
    streams = [s for s in (video, audio) if s is not None]
    # Start decoding a little early: the audio decoder needs a packet or two to settle.
    lead = max(t0 - Fraction(AUDIO_LEAD_SEC), _sec(key.start_time or 0, key.time_base))
    k, packets = _packets_from_keyframe(inp, key, streams, lead, t1)
    if k is None:
        return None, None
    vw = _VideoWriter(out, video, t0, t1) if video is not None else None
    aw = _AudioWriter(out, audio, audio_codec, t0, t0, t1) if audio is not None else None
    for packet in packets:
        writer = vw if packet.stream is video else aw
        for frame in _decode(packet.stream, packet):
            writer.add(frame)
    for stream, writer in ((video, vw), (audio, aw)):
        if writer is not None:
            for frame in _decode(stream, None):
                writer.add(frame)
            writer.close()
    ends = [w.end for w in (vw, aw) if w is not None and w.end is not None]
    if not ends:
        return None, None
    return t0, min(max(ends), t1)


def _write(file, ext, inp, video, audio, t0, t1, how, audio_codec):
    """Into the open `file`, from its start (a second try overwrites the first)."""
    file.seek(0)
    file.truncate()
    with av.open(file, "w", format=MUXERS[ext]) as out:
        write = _write_exact if how == "exact" else _write_copy
        return write(inp, out, video, audio, t0, t1, audio_codec)


def cut_clip(source, out_stem, start_sec: float, end_sec: float, origin_sec: float = 0.0,
             exact: bool = False, stream_index: int | None = None) -> ClipResult:
    """Write [start_sec, end_sec) of `source` (stream seconds) to out_stem plus an extension
    chosen from the source (see _plan), atomically. stream_index picks the audio stream as
    AudioDecoder does."""
    out_stem = Path(out_stem)
    if not end_sec > start_sec:
        raise HighlightSenseError(
            f"clip {out_stem.name} ends ({end_sec:.2f} s) before it starts ({start_sec:.2f} s)")
    origin = _fraction(origin_sec)
    t0, t1 = origin + _fraction(start_sec), origin + _fraction(end_sec)
    inp = open_media(source)
    tmp, written = None, None
    try:
        video = _video_stream(inp)
        audio = audio_stream(inp, source, stream_index) if inp.streams.audio else None
        if video is None and audio is None:
            raise HighlightSenseError(f"{source} has neither audio nor video to cut a clip from")
        ext, how, audio_codec, note = _plan(video, audio, exact)
        path = out_stem.with_name(out_stem.name + ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Our own new file, never a link planted at its name (files.create_new).
        tmp = temp_name(path)
        written = create_new(tmp)
        try:
            start, end = _write(written, ext, inp, video, audio, t0, t1, how, audio_codec)
        except (av.FFmpegError, ValueError) as e:
            if how != "copy" or audio_codec != "copy" or video is None:
                raise
            # The muxer refused the copied audio after all: re-encode it to AAC.
            audio_codec = "aac"
            note = f"mp4 refused {_codec_name(audio)} audio ({e}), so it was re-encoded to AAC"
            start, end = _write(written, ext, inp, video, audio, t0, t1, how, audio_codec)
        if start is None:
            raise HighlightSenseError(
                f"nothing to cut between {start_sec:.2f} s and {end_sec:.2f} s of {source}; "
                "the window lies outside the file")
        written.close()
        os.replace(tmp, path)
        tmp = None
    except HighlightSenseError:
        raise
    except Exception as e:  # anything from FFmpeg or the disk, worded on one line
        reason = " ".join(str(e).split()) or type(e).__name__
        raise HighlightSenseError(f"could not cut {out_stem.name} from {source}: {reason}") from e
    finally:
        inp.close()
        if written is not None:
            written.close()
        if tmp is not None and written is not None:
            tmp.unlink(missing_ok=True)
    if how == "exact":
        mode = "exact"
    else:
        mode = "copy" if audio_codec in ("copy", None) else "copy+aac"
        early = t0 - start
        if early > Fraction(1, 20) and not note:
            where = "the keyframe" if video is not None else "an audio packet boundary"
            note = f"starts {float(early):.2f} s before the requested time, at {where}"
    if end < t1 - Fraction(1, 10):
        note = "; ".join(filter(None, [note, "the source ends before the requested end"]))
    return ClipResult(path=path, start_sec=float(start - origin), end_sec=float(end - origin),
                      mode=mode, note=note)


def _fraction(seconds: float) -> Fraction:
    return Fraction(seconds).limit_denominator(10**9)


def clip_name(rank: int, start_sec: float, of: int | None = None) -> str:
    """The name (cut_clip adds the extension) of the clip of the rank-th of `of` highlights,
    with its window's start: highlight_01_0h12m03s, highlight_02_1h02m40s, ..., the rank with
    as many digits as `of` needs, at least 2. Without `of` (a live watch, which cannot know how
    many will come): 4 digits, highlight_0001_0h03m05s."""
    digits = 4 if of is None else max(2, len(str(of)))
    return f"highlight_{rank:0{digits}d}_{in_name(start_sec)}"


# Every name clip_name gives (and the names of versions before the start time was in them):
# the only files in a clips folder this tool deletes when a new selection no longer names them.
CLIP_NAME = re.compile(r"highlight_\d{2,}(_\d+h\d\dm\d\ds)?\.[A-Za-z0-9]{2,5}")


def cut_clips(source, clips_dir, windows, origin_sec: float = 0.0, exact: bool = False,
              stream_index: int | None = None,
              before: Callable[[int, int], None] | None = None) -> list[ClipResult]:
    """Cut each (start, end) window into clips_dir/highlight_01_<start>.*, highlight_02_... in
    the order given; before(k, n) is told as the k-th of n begins. The source is opened once
    per clip: each cut seeks anyway, and closing between clips keeps no decoder state from one
    to the next."""
    clips_dir = Path(clips_dir)
    results = []
    for i, (start, end) in enumerate(windows, 1):
        if before is not None:
            before(i, len(windows))
        results.append(cut_clip(source, clips_dir / clip_name(i, start, len(windows)), start,
                                end, origin_sec=origin_sec, exact=exact,
                                stream_index=stream_index))
    return results
