"""The HLS audio source: HlsAudioSource decodes an HLS stream's audio as its segments arrive
(from operators.sources.hls_reader), for `detect URL` and `watch`.

Decoding. HlsAudioSource feeds the bytes to PyAV through a file object (_GroupBytes), one
container per run of segments that share a timeline: a discontinuity, a skipped ad break or missed
segments start a new one, because timestamps restart or jump there. AudioDecoder does the decoding
(gap filling, corrupt packets, chunking); stream time stays continuous and counts the audio as
received. `info.timeline` (TimelineEntry) maps stream time back to each run's own timestamps (for
cutting clips: stream_to_container).
"""
import logging
from dataclasses import dataclass, replace
from typing import Iterator, List, Optional

from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.grid import AUDIO_RATE
from highlightsense.engine.operator import Source, SourceInfo
from highlightsense.operators.sources.fetch import FetchPolicy
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
            origin_sec=None, has_video=False, timeline=[], live_edge_sec=self.reader.listed_sec)
        self.samples = 0  # stream time delivered, in samples
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
        """The reader's fragments, with info.live_edge_sec brought up to date at each: the
        reader lists new segments only just before it hands on the next fragment."""
        fragments = self.reader.fragments()
        try:
            for fragment in fragments:
                self.info.live_edge_sec = self.reader.listed_sec
                yield fragment
        finally:
            fragments.close()

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
