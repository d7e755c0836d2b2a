"""The HLS audio source: HlsAudioSource decodes an HLS stream's audio as its segments arrive
(from operators.sources.hls_reader), for `detect URL` and `watch`.

Decoding. HlsAudioSource feeds the bytes to PyAV through a file object (_GroupBytes), one
container per run of segments that share a timeline: a discontinuity, a skipped ad break or missed
segments start a new one, because timestamps restart or jump there. AudioDecoder does the decoding
(gap filling, corrupt packets, chunking); stream time stays continuous and counts the audio as
received. `info.timeline` (TimelineEntry) maps stream time back to each run's own timestamps (for
cutting clips: stream_to_container).

Broadcast time. `info.broadcast_times` (BroadcastTimes) maps stream time to the broadcast's own
time (Twitch's EXT-X-TWITCH-ELAPSED-SECS: seconds since the broadcast began, where its VOD has
that moment) and to UTC (EXT-X-PROGRAM-DATE-TIME), segment by segment: stream time pauses over a
skipped ad break (and missed segments) while both of those run on, so no single offset does.
"""
import bisect
import logging
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Deque, Iterator, List, Optional, Tuple

from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.grid import AUDIO_RATE
from highlightsense.engine.operator import Source, SourceInfo
from highlightsense.operators.sources.fetch import FetchPolicy
from highlightsense.operators.sources.hls_playlist import Segment
from highlightsense.operators.sources.hls_reader import Fragment, HlsReader

log = logging.getLogger("highlightsense")


class _GroupBytes:
    """A read-only file object over the bytes of one run of fragments (one container): EOF when
    the next fragment starts a new group; that fragment is kept for the next run."""

    def __init__(self, reader: HlsReader, fragments: Iterator[Fragment], first: Fragment):
        self.reader = reader
        self.fragments = fragments
        self.first = first
        self.fragment: Optional[Fragment] = first
        self.prefix = reader.init_section(first.segment)
        self.pos = 0
        self.held: Optional[Fragment] = None  # the first fragment of the next group
        self.exhausted = False  # the reader has no more fragments
        self.error: Optional[BaseException] = None

    def __str__(self) -> str:
        return self.reader.url

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = n if n and n > 0 else 1 << 16
        try:
            return self._read(n)
        except BaseException as e:
            self.error = e  # PyAV may turn an exception in a read into an end of file
            raise

    def _read(self, n: int) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            return data
        while self.fragment is not None:
            data = self.fragment.download.read_at(self.pos, n)
            if data:
                self.pos += len(data)
                return data
            following = next(self.fragments, None)
            if following is None:
                self.exhausted = True
            if following is None or following.new_group:
                self.held, self.fragment = following, None
                return b""
            self.fragment, self.pos = following, 0
        return b""


@dataclass
class TimelineEntry:
    """Stream time `stream_sec` is container time `origin_sec` of the segments with this
    discontinuity number, from segment `sequence` on (until the next entry)."""

    stream_sec: float
    origin_sec: float
    discontinuity: int
    sequence: int


@dataclass(frozen=True)
class SegmentTimes:
    """Where one segment taken starts: in stream time, in the broadcast, on the clock."""

    stream_sec: float
    duration: float
    broadcast_sec: Optional[float]  # seconds since the broadcast began; None: playlist silent
    utc: Optional[datetime]  # its EXT-X-PROGRAM-DATE-TIME, in UTC; None: playlist silent
    sequence: int

    @classmethod
    def of(cls, segment: Segment, stream_sec: float) -> "SegmentTimes":
        utc = segment.date
        if utc is not None:  # the RFC asks for an offset; one without it is taken as UTC
            utc = (utc.replace(tzinfo=timezone.utc) if utc.tzinfo is None
                   else utc.astimezone(timezone.utc))
        return cls(stream_sec, segment.duration, segment.broadcast_sec, utc, segment.sequence)


class BroadcastTimes:
    """Stream time to broadcast time and UTC, through the segment that holds each moment.

    Filled by the source's thread as segments are taken, read by others (watch's events): hence
    the lock. Bounded for a days-long watch: entries that end more than keep_sec behind the
    newest one's end are dropped (watch sets keep_sec to how far back its events look).
    """

    def __init__(self, keep_sec: float = 3600.0):
        self.keep_sec = keep_sec
        self._entries: Deque[SegmentTimes] = deque()
        self._starts: Deque[float] = deque()  # the entries' stream_sec, increasing (to bisect)
        self._lock = threading.Lock()

    @property
    def entries(self) -> List[SegmentTimes]:
        with self._lock:
            return list(self._entries)

    def add(self, entry: SegmentTimes) -> None:
        with self._lock:
            self._entries.append(entry)
            self._starts.append(entry.stream_sec)
            horizon = entry.stream_sec + entry.duration - self.keep_sec
            while len(self._starts) > 1 and self._starts[1] <= horizon:  # [0] ends by then
                self._entries.popleft()
                self._starts.popleft()

    def at(self, stream_sec: float, end: bool = False
           ) -> Tuple[Optional[float], Optional[datetime]]:
        """(broadcast seconds, UTC) of the moment stream_sec, each None where the playlist does
        not say or the moment is no longer (or not yet) kept. end: the moment is the end of a
        span, so it maps through the segment holding the instant just before it (a span that
        ends where an ad break begins ends before the ad in the broadcast too)."""
        with self._lock:
            if end:  # the last segment starting before stream_sec
                i = bisect.bisect_left(self._starts, stream_sec - 1e-6) - 1
            else:  # the last one starting at or before it
                i = bisect.bisect_right(self._starts, stream_sec + 1e-6) - 1
            if i < 0:
                return None, None
            entry = self._entries[i]
        past = stream_sec - entry.stream_sec
        return (entry.broadcast_sec + past if entry.broadcast_sec is not None else None,
                entry.utc + timedelta(seconds=past) if entry.utc is not None else None)


@dataclass
class _Run:
    """The segments of one container (a group of fragments), as they are taken: their stream
    start is known only once the run before has been decoded to its end."""

    first: Fragment
    start_sec: Optional[float] = None  # stream time of its first sample, once known
    listed_sec: float = 0.0  # its segments' durations so far
    waiting: List[Tuple[float, Segment]] = field(default_factory=list)  # (offset, segment)


class HlsAudioSource(Source):
    """AudioChunks (float32 (2, n), 44.1 kHz) of an HLS stream's audio, decoded as segments
    arrive: the Source for `detect URL` and `watch`. See the module's text."""

    name = "decode"

    def __init__(self, url: str, stream_index: Optional[int] = None, chunk_sec: float = 1.0,
                 parallel: int = 4, policy: Optional[FetchPolicy] = None, start: str = "first",
                 poll_sec: Optional[float] = None, idle_sec: Optional[float] = None):
        self.reader = HlsReader(url, policy, parallel, "audio", start, poll_sec, idle_sec)
        self.path = url
        self.stream_index = stream_index
        self.chunk_sec = chunk_sec
        # has_video: the audio rendition has none; open_audio sets it when another one has.
        # live_edge_sec: the stream time at the end of the newest segment listed (by the
        # playlist's durations), kept current as the reader takes segments (_fragments).
        self.info = SourceInfo(
            path=url,
            duration_sec=self.reader.playlist.duration_sec if not self.reader.live else None,
            origin_sec=None, has_video=False, timeline=[], live_edge_sec=self.reader.listed_sec,
            broadcast_times=BroadcastTimes())
        self.samples = 0  # stream time delivered, in samples
        self._runs: Deque[_Run] = deque()  # the run being decoded, and any taken after it
        self._decoder = None
        self._closing = False
        self._iterated = False

    def __iter__(self) -> Iterator[AudioChunk]:
        if self._iterated:
            raise RuntimeError("HlsAudioSource can be iterated only once")
        self._iterated = True
        from highlightsense.operators.sources.decode import AudioDecoder

        fragments = self._fragments()
        first = next(fragments, None)
        if first is None:
            raise HighlightSenseError(f"{self.path} lists no segments")
        try:
            while first is not None and not self._closing:
                group = _GroupBytes(self.reader, fragments, first)
                try:
                    self._decoder = AudioDecoder(group, self.stream_index, self.chunk_sec)
                except HighlightSenseError as e:
                    if group.error is not None:
                        raise group.error from None
                    if not self.info.timeline or "no audio samples" not in str(e):
                        raise
                    # A run with no audio at all (a tiny segment): nothing to add.
                    log.warning("%s: segments from %d hold no audio; skipped", self.path,
                                first.segment.sequence)
                    self._drain(group)
                    first = group.held
                    continue
                self.info.timeline.append(TimelineEntry(self.samples / AUDIO_RATE,
                                                        self._decoder.info.origin_sec,
                                                        first.segment.discontinuity,
                                                        first.segment.sequence))
                self._run_starts(first, self.samples / AUDIO_RATE)
                if self.info.origin_sec is None:
                    self.info.origin_sec = self._decoder.info.origin_sec
                offset = self.samples
                for chunk in self._decoder:
                    self.samples = offset + chunk.end
                    yield replace(chunk, start=offset + chunk.start)
                if group.error is not None:
                    raise group.error
                self.info.corrupt_packets += self._decoder.info.corrupt_packets
                self.info.gaps_filled_sec += self._decoder.info.gaps_filled_sec
                self._drain(group)  # bytes past the audio's end (PyAV may stop early)
                first = group.held
        finally:
            self.close()

    def _fragments(self) -> Iterator[Fragment]:
        """The reader's fragments, with info.live_edge_sec brought up to date at each (the
        reader lists new segments only just before it hands on the next fragment) and each
        one's times noted for info.broadcast_times."""
        fragments = self.reader.fragments()
        try:
            for fragment in fragments:
                self.info.live_edge_sec = self.reader.listed_sec
                self._taken(fragment)
                yield fragment
        finally:
            fragments.close()

    def _taken(self, fragment: Fragment) -> None:
        """Notes a segment's times: within a run, segments follow one another by their
        durations; the run's own start waits for the run before to be decoded to its end."""
        if fragment.new_group or not self._runs:
            self._runs.append(_Run(fragment))
        run = self._runs[-1]
        offset = run.listed_sec
        run.listed_sec += fragment.segment.duration
        if run.start_sec is None:
            run.waiting.append((offset, fragment.segment))
        else:
            self.info.broadcast_times.add(SegmentTimes.of(fragment.segment,
                                                          run.start_sec + offset))

    def _run_starts(self, first: Fragment, stream_sec: float) -> None:
        """The run from `first` begins at stream_sec: its segments' times can be published."""
        while self._runs and self._runs[0].first is not first:
            self._runs.popleft()  # runs decoded before, or that held no audio
        if not self._runs:
            return
        run = self._runs[0]
        run.start_sec = stream_sec
        for offset, segment in run.waiting:
            self.info.broadcast_times.add(SegmentTimes.of(segment, stream_sec + offset))
        run.waiting.clear()

    @staticmethod
    def _drain(group: _GroupBytes) -> None:
        while group.fragment is not None and group.read(1 << 16):
            pass

    def close(self) -> None:
        """Never blocks: stops the downloads, which ends any read waiting for them."""
        self._closing = True
        self.reader.close()
        if self._decoder is not None:
            self._decoder.close()


def stream_to_container(timeline: List[TimelineEntry], stream_sec: float) -> TimelineEntry:
    """The timeline entry that stream_sec falls in."""
    entry = timeline[0]
    for e in timeline:
        if e.stream_sec <= stream_sec + 1e-9:
            entry = e
    return entry
