"""The recording's own tracks as stems. OBS ("Advanced" output) and other recorders keep up to six
audio tracks: the mix, the microphone, the game or desktop audio. Then voice and game are already
apart, and Demucs, by far the slowest stage, is not needed.

resolve_tracks() turns the settings into stream indexes for one file: --voice-track and
--game-track (audio stream indexes, counted as --audio-stream counts them; "2+3" sums two), or
--tracks auto, which picks them by the streams' titles and handler names. TrackDecoder decodes
every stream it needs in one demux pass onto one timeline and yields chunks that carry voice,
game and mix together (operators/track_stems.py hands the stems on where Separate would).

The timeline: stream time 0 is the earliest first sample of the streams used; each stream is
placed by its timestamps, holes filled with silence, rates and layouts converted to 44.1 kHz
stereo with FFmpeg's resampler as AudioDecoder converts them (mono copied to both channels). A
stream whose packets stop for more than LAG_SEC while the others go on (it ended, or has a long
hole) is filled with silence as the others advance, so memory stays bounded.

A restart (a resumed run) decodes and resamples every stream from the file's start and hands on
nothing before its start sample: exact for every codec, with no restart points to keep; AAC,
what recorders write, would need every packet from the start anyway (see decode.py).
"""
import logging
import re
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import av
import numpy as np

from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.config import Config, track_sum
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.grid import AUDIO_RATE
from highlightsense.engine.operator import SourceInfo
from highlightsense.engine.timecode import hms
from highlightsense.operators.sources.decode import (FileDecoder, _input_format, _seconds,
                                                     audio_stream, is_cover_art, open_media, tag)

log = logging.getLogger("highlightsense")

# The order of a TrackDecoder chunk's stems: voice and game first, as Separate emits them (so
# the stems stage hands on a view), then the mix.
TRACK_STEMS = ("voice", "game", "mix")
# FFmpeg's muxers keep streams interleaved within max_interleave_delta (10 s): a stream silent
# for longer than this while the others go on has a hole, or has ended.
LAG_SEC = 10.0
ENDS_EARLY_SEC = 1.0  # a stream ending this much before the others gets a warning

_VOICE = re.compile(r"\b(mic|microphone|voice)", re.IGNORECASE)
_GAME = re.compile(r"\b(game|desktop|system)", re.IGNORECASE)


def uses_tracks(cfg: Config) -> bool:
    """Whether the stems come from the recording's tracks (resolved settings, see
    resolve_tracks) instead of Demucs."""
    return cfg.voice_track is not None


@dataclass(frozen=True)
class TrackChoice:
    """Audio stream indexes (as --audio-stream counts them) of each stem; each may be a sum."""

    voice: Tuple[int, ...]
    game: Tuple[int, ...]
    mix: Tuple[int, ...]  # --audio-stream, or voice + game when the file has no mix track

    def streams(self, stems=TRACK_STEMS) -> Tuple[int, ...]:
        """The streams that `stems` are made of."""
        return tuple(sorted({i for stem in stems for i in getattr(self, stem)}))


def _plus(indexes) -> str:
    return "+".join(str(i) for i in indexes)


def _titles(stream) -> str:
    return " ".join(t for t in (tag(stream, "title"), tag(stream, "handler_name")) if t)


def _by_title(streams) -> Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """(voice, game) stream indexes whose titles say which is which; a title naming both (a mix
    "Mic + Desktop") counts for neither. None unless both are found."""
    voice, game = [], []
    for i, stream in enumerate(streams):
        text = _titles(stream)
        is_voice, is_game = bool(_VOICE.search(text)), bool(_GAME.search(text))
        if is_voice != is_game:
            (voice if is_voice else game).append(i)
    return (tuple(voice), tuple(game)) if voice and game else None


def choose_tracks(container, path: str, cfg: Config) -> Optional[TrackChoice]:
    """The tracks the settings name in this file, checked (each an audio stream FFmpeg
    decodes), or None when the stems come from Demucs."""
    if cfg.tracks == "auto":
        picked = _by_title(list(container.streams.audio))
        if picked is None:
            return None
        voice, game = picked
    elif cfg.voice_track is None:
        return None
    else:
        voice, game = track_sum(cfg.voice_track), track_sum(cfg.game_track)
    for flag, indexes in (("--voice-track", voice), ("--game-track", game)):
        for index in indexes:
            audio_stream(container, path, index, flag)
    if cfg.audio_stream is not None:
        mix = (cfg.audio_stream,)
    else:
        mix = voice + game if 0 in voice + game else (0,)
    return TrackChoice(voice, game, mix)


def resolve_tracks(input_path: str, cfg: Config) -> Config:
    """The settings with the tracks resolved for this input: --tracks auto becomes the stream
    indexes it picked (said in one line), or nothing (Demucs separates, said too); explicit
    tracks are checked against the file. What the progress record's fingerprint then holds."""
    from highlightsense.operators.sources.resolve import is_url

    if cfg.tracks is None and cfg.voice_track is None:
        return cfg
    if is_url(input_path):
        if cfg.tracks == "auto":
            log.info("--tracks auto: a URL's tracks are not read; separating with Demucs")
            return replace(cfg, tracks=None)
        raise HighlightSenseError("--voice-track and --game-track take a local file's tracks; "
                                  "download the recording first, or leave them out")
    with open_media(input_path) as container:
        choice = choose_tracks(container, input_path, cfg)
        streams = list(container.streams.audio)
    if choice is None:
        listing = "; ".join(f"{i}: {_titles(s) or 'untitled'}" for i, s in enumerate(streams))
        log.info("--tracks auto: no stream titles name both the microphone (mic, voice) and "
                 "the game (game, desktop, system) (audio streams: %s); separating with Demucs",
                 listing)
        return replace(cfg, tracks=None)
    if cfg.tracks == "auto":
        log.info("--tracks auto: voice from audio stream %s, game from %s (by their titles); "
                 "Demucs is skipped", _plus(choice.voice), _plus(choice.game))
    if choice.mix == choice.voice + choice.game:
        log.info("audio stream 0 is a stem, so the mix is voice + game (give --audio-stream "
                 "for a mix track)")
    return replace(cfg, tracks=None, voice_track=_plus(choice.voice),
                   game_track=_plus(choice.game))


class _Lane:
    """One stream's frames placed on the common timeline at 44.1 kHz stereo: its samples (and
    the silence filled in) from stream sample `taken` to `placed`, queued until taken."""

    def __init__(self, index: int, stream, path: str):
        self.index, self.stream, self.path = index, stream, path
        self.first_sec = None  # container time of its first frame
        self.expected = None  # container time where its next frame should start
        self.resampler, self.mono, self.format = None, False, None
        self.pieces, self.placed, self.taken = [], 0, 0
        self.quiet_from = None  # stream sample where silence for a stalled stream began
        self.bad = 0  # corrupt packets not yet reported
        self.filled = 0  # samples of silence put in after its first frame (holes, stalls)
        self.last_audio = 0  # stream sample one past its last real sample

    def place(self, frame, origin: float) -> float:
        """Queue a decoded frame at its time; returns that (container) time."""
        t = _seconds(frame.pts, frame.time_base or self.stream.time_base)
        if t is None:
            t = self.expected if self.expected is not None else origin
        dur = frame.samples / frame.sample_rate
        at = round((t - origin) * AUDIO_RATE)
        tolerance = max(0.002, min(0.010, dur / 2))
        if self.expected is None or t - self.expected > tolerance or self.quiet_from is not None:
            self._flush()
            began = self.quiet_from if self.quiet_from is not None else self.placed
            self.silence(at - self.placed)
            if self.expected is not None and self.placed > began:
                log.warning("%s: audio stream %d: %.3f s missing at %s, filled with silence",
                            self.path, self.index, (self.placed - began) / AUDIO_RATE,
                            hms(began / AUDIO_RATE))
            self.quiet_from = None
        if self.bad:
            log.warning("%s: audio stream %d: skipped %d corrupt packet%s before %s", self.path,
                        self.index, self.bad, "s" if self.bad > 1 else "", hms(at / AUDIO_RATE))
            self.bad = 0
        if self.resampler is not None and _input_format(frame) != self.format:
            self._flush()  # the input's format changed mid-stream
        if self.resampler is None:
            # Mono stays mono and is copied to both channels: FFmpeg's upmix lowers it by 3 dB.
            self.mono = frame.layout.nb_channels == 1
            self.format = _input_format(frame)
            self.resampler = av.AudioResampler(format="fltp", rate=AUDIO_RATE,
                                               layout="mono" if self.mono else "stereo")
        self._queue(self.resampler.resample(frame))
        self.last_audio = self.placed  # (and what the resampler still holds, at its flush)
        self.expected = t + dur
        return t

    def stall(self, until: int) -> None:
        """Nothing came for this stream up to stream sample `until` while the others went on:
        silence there, so they need not wait (reported when it resumes or at the end)."""
        if until > self.placed:
            self._flush()
            if self.quiet_from is None:
                self.quiet_from = self.placed
            self.silence(until - self.placed)

    def finish(self) -> None:
        self._flush()

    def silence(self, n: int) -> None:
        if n > 0:
            self.pieces.append(np.zeros((2, n), np.float32))
            self.placed += n
            if self.expected is not None:
                self.filled += n

    def _flush(self) -> None:
        if self.resampler is not None:
            self._queue(self.resampler.resample(None))
            self.resampler = None
            self.last_audio = self.placed

    def _queue(self, frames) -> None:
        for f in frames:
            a = f.to_ndarray()
            if self.mono:
                a = np.repeat(a, 2, axis=0)
            if a.shape[1]:
                self.pieces.append(a)
                self.placed += a.shape[1]

    def take(self, n: int) -> np.ndarray:
        """The next n samples (2, n), silence past what is placed."""
        out = np.zeros((2, n), np.float32)
        got = 0
        while got < n and self.pieces:
            piece = self.pieces[0]
            k = min(n - got, piece.shape[1])
            out[:, got:got + k] = piece[:, :k]
            got += k
            if k == piece.shape[1]:
                self.pieces.pop(0)
            else:
                self.pieces[0] = piece[:, k:]
        self.placed = max(self.placed, self.taken + n)
        self.taken += n
        return out


class TrackDecoder(FileDecoder):
    """Yields AudioChunk(float32 (len(stems), 2, n), 44100 Hz, start, stems) of about chunk_sec
    each, contiguous: each of `stems` (of TRACK_STEMS) the sum of its streams in `choice`. With
    the mix alone, plain mix chunks (2, n) with no stems (what the loudness scorer reads).

    start_sample: begin at this stream sample (a restart: see the module).
    """

    name = "decode"

    def __init__(self, path, choice: TrackChoice, stems=TRACK_STEMS, chunk_sec: float = 1.0,
                 start_sample: int = 0):
        super().__init__()
        self.path = str(path)
        self.choice, self.stems = choice, tuple(stems)
        self.chunk_samples = max(1, round(chunk_sec * AUDIO_RATE))
        self.start_sample = start_sample
        self.info = SourceInfo(path=self.path, start_sample=start_sample)
        self.container = open_media(path)
        try:
            used = choice.streams(self.stems)  # the loudness scorer's mix alone: only its own
            streams = [audio_stream(self.container, self.path, i) for i in used]
            self.lanes = [_Lane(i, s, self.path) for i, s in zip(used, streams)]
            self._lane_of = {s.index: lane for s, lane in zip(streams, self.lanes)}
            self.info.codec = "+".join(dict.fromkeys(s.codec_context.name for s in streams))
            self.info.has_video = any(not is_cover_art(v) for v in self.container.streams.video)
            self._packets = self.container.demux(streams)
            self._early = self._first_frames()  # fixes origin_sec; an empty file fails here
            self.info.duration_sec = self._duration()
        except BaseException:
            self.close()
            raise

    def _duration(self) -> Optional[float]:
        c = self.container
        if c.duration:
            end = (c.start_time or 0) / av.time_base + c.duration / av.time_base
            return max(0.0, end - self.info.origin_sec)
        return None

    # -- decoding ---------------------------------------------------------------------------------

    def _decoded(self):
        """(lane, frames) for every packet of the streams used, in the file's order; a packet
        FFmpeg cannot decode is skipped and counted."""
        while True:
            with self._lock:
                if self.container is None:
                    return
                if self._closing:  # close() came from another thread during a read
                    self.container.close()
                    self.container = None
                    return
                try:
                    packet = next(self._packets, None)
                except av.FFmpegError as e:
                    log.warning("%s: cannot read past this point (%s); the rest of the file is "
                                "left out", self.path, e.strerror or e)
                    packet = None
                if packet is None:
                    return
                lane = self._lane_of[packet.stream.index]
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    self.info.corrupt_packets += 1
                    lane.bad += 1
                    continue
            yield lane, frames

    def _first_frames(self) -> list:
        """Decode until every stream has shown its first frame (or LAG_SEC past the first one
        seen): the earliest is stream time 0. Returns the (lane, frame) decoded so far."""
        early, firsts = [], {}
        self._decoded_iter = self._decoded()
        for lane, frames in self._decoded_iter:
            for frame in frames:
                early.append((lane, frame))
                t = _seconds(frame.pts, frame.time_base or lane.stream.time_base) or 0.0
                firsts.setdefault(lane, t)
            if len(firsts) == len(self.lanes) or (
                    firsts and max(firsts.values()) > min(firsts.values()) + LAG_SEC):
                break
        if not firsts:
            raise HighlightSenseError(f"{self.path} contains no audio samples in audio streams "
                                      f"{_plus(lane.index for lane in self.lanes)}")
        self.info.origin_sec = min(firsts.values())
        return early

    def _chunks(self):
        origin = self.info.origin_sec
        self._emitted = 0  # stream samples taken from the lanes (handed on, or dropped)
        reached = origin  # the latest container time any stream has reached
        for lane, frame in self._early:
            reached = max(reached, lane.place(frame, origin))
        self._early = []
        for lane, frames in self._decoded_iter:
            for frame in frames:
                reached = max(reached, lane.place(frame, origin))
            # A stream silent for LAG_SEC while the others go on: silence, so memory stays flat.
            for other in self.lanes:
                other.stall(round((reached - LAG_SEC - origin) * AUDIO_RATE))
            yield from self._ready(min(lane.placed for lane in self.lanes))
        for lane in self.lanes:
            lane.finish()
        end = max(lane.placed for lane in self.lanes)
        self._report_ends(end)
        yield from self._ready(end, last=True)

    def _report_ends(self, end: int) -> None:
        for lane in self.lanes:
            if end - lane.last_audio > ENDS_EARLY_SEC * AUDIO_RATE:
                log.warning("%s: audio stream %d ends %.1f s before the others; filled %.1f s "
                            "to %.1f s (%s to %s) with silence", self.path, lane.index,
                            (end - lane.last_audio) / AUDIO_RATE, lane.last_audio / AUDIO_RATE,
                            end / AUDIO_RATE, hms(lane.last_audio / AUDIO_RATE),
                            hms(end / AUDIO_RATE))
            self.info.gaps_filled_sec += (lane.filled + end - lane.placed) / AUDIO_RATE

    def _ready(self, upto: int, last: bool = False):
        """Chunks of every stream's samples up to stream sample `upto` (whole chunks unless
        `last`); a restart drops those before its start sample."""
        while upto - self._emitted >= (1 if last else self.chunk_samples):
            if self._emitted < self.start_sample:
                n = min(upto, self.start_sample) - self._emitted
                for lane in self.lanes:
                    lane.take(n)
                self._emitted += n
                continue
            n = min(self.chunk_samples, upto - self._emitted)
            yield self._chunk(n)

    def _chunk(self, n: int) -> AudioChunk:
        taken = {lane.index: lane.take(n) for lane in self.lanes}
        sums = []
        for stem in self.stems:
            indexes = getattr(self.choice, stem)
            total = taken[indexes[0]].copy() if len(indexes) > 1 else taken[indexes[0]]
            for i in indexes[1:]:
                total += taken[i]
            sums.append(total)
        start, self._emitted = self._emitted, self._emitted + n
        if self.stems == ("mix",):
            return AudioChunk(sums[0], AUDIO_RATE, start)
        return AudioChunk(np.stack(sums), AUDIO_RATE, start, self.stems)

