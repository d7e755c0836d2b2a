"""The contracts between stages, declared once. The pipeline (engine/pipeline.py) and `detect`
rely on these and nothing else: no stage is probed for attributes it might have.

- Operator: takes chunks one at a time and returns the chunks it can emit now; at end of stream,
  flush() returns whatever it still holds. It knows nothing of its neighbours, of queues or of
  asyncio; the pipeline runs it (in a worker thread when `threaded`).
- RestartableStage: an operator a resumed run can start mid-stream. It publishes its look-ahead,
  says where its input must begin for its output to equal an uninterrupted run's, and hands
  over the state that input cannot rebuild. Positions are stream samples at 44.1 kHz, always.
- ClockReader: an operator that is also told the stream time as it advances (Ticks, in band).
- Source: yields the stream's chunks and describes its input with one SourceInfo, which wrappers
  pass on as it is.
- Scorer: scores batches of windows, and declares what it reads: its feature chain, the padding
  and the batch size of its windows.
"""
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Protocol, Sequence


class Operator:
    name = "operator"
    threaded = True  # heavy compute runs off the event loop

    def process(self, chunk: Any) -> List[Any]:
        raise NotImplementedError

    def flush(self) -> List[Any]:
        return []


class ClockReader(Operator):
    """An operator that reads the stream clock: the pipeline hands it each Tick
    (engine.chunks.Tick: the stream time the source has reached) in order with its chunks,
    and then passes the Tick on; other operators never see ticks (engine.pipeline)."""

    def on_tick(self, tick) -> List[Any]:
        """The chunks it can emit now that the stream has reached tick.stream_sec."""
        return []


class RestartableStage(Operator):
    """A streaming stage that a resumed run restarts mid-stream with output equal to an
    uninterrupted run's. Every position is a stream sample at 44.1 kHz (grid.AUDIO_RATE),
    whatever the stage emits (frames are on the 1024-sample grid: grid.frame_sample)."""

    @property
    def lookahead_samples(self) -> int:
        """Input past a stream sample the stage must receive before it emits everything up to
        that sample: its latency, and how far a run must read past the last output it wants."""
        raise NotImplementedError

    def restart_sample(self, first_needed: int) -> int:
        """The latest input sample a restarted stage can begin at and still emit, from
        `first_needed` on, exactly what an uninterrupted run emits (given `state()`)."""
        raise NotImplementedError

    # What state() gives, as a JSON schema (engine.records): a progress record's copy is
    # checked against it before restore() takes it.
    state_schema: dict = {"type": "object", "maxProperties": 0}

    def state(self) -> dict:
        """What a restart needs beyond its input (JSON-able), read between chunks."""
        return {}

    def restore(self, state: dict) -> None:
        """Take the state an earlier run's `state()` gave, before the first chunk."""


def restart_sample(stages: Sequence[RestartableStage], first_needed: int) -> int:
    """Where a chain of stages must begin reading for each to give its output from
    `first_needed` on as an uninterrupted run does: each stage, last first, asks for its input
    early enough to fill its buffers."""
    sample = first_needed
    for stage in reversed(stages):
        sample = stage.restart_sample(sample)
    return sample


def lookahead_samples(stages: Sequence[RestartableStage]) -> int:
    """The look-ahead of a chain: the input past a sample it needs before it emits that sample."""
    return sum(stage.lookahead_samples for stage in stages)


@dataclass
class SourceInfo:
    """What a source knows of its input. The source fills it in as it streams (the origin when
    it opens, the counts as it goes); wrappers hand on the same object, so every reader sees the
    live values."""

    path: str = ""  # the file or URL, for messages
    codec: Optional[str] = None  # the audio codec's name
    duration_sec: Optional[float] = None  # stream time to expect; None when unknown (live)
    origin_sec: Optional[float] = None  # container time of stream sample 0
    has_video: bool = False  # a video stream to cut clips from (not cover art)
    start_sample: int = 0  # the stream sample the source begins at (a restart begins later)
    # (frame pts, input samples its resampler had taken, stream sample the resampler began at),
    # one about every few seconds: where an exact restart can begin (files only).
    sync_points: List[tuple] = field(default_factory=list)
    corrupt_packets: int = 0  # packets FFmpeg could not decode, skipped
    gaps_filled_sec: float = 0.0  # silence put in where the timestamps jumped
    timeline: Optional[list] = None  # HLS: stream time to each run's own timestamps (clips)
    live_edge_sec: Optional[float] = None  # live HLS: stream time of the newest listed segment
    # HLS: stream time to broadcast time and UTC, segment by segment (hls_source.BroadcastTimes:
    # a skipped ad break pauses stream time only); None for other sources.
    broadcast_times: Optional[Any] = None


class Source:
    """A producer of chunks. The pipeline pulls next() from a worker thread, so it may block.
    `info` describes the input; set it in __init__."""

    name = "source"
    info: SourceInfo

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class FeatureRun:
    """How one pass runs a scorer's feature stages. A resumed pass emits from a later frame; the
    second pass knows the whole stream's dB reference; the first keeps its first frames' levels
    for the second (engine.second_pass.HeldLevels). A scorer whose features have no dB
    reference ignores the last two."""

    emit_from: int = 0  # the first frame to emit (frames before it were scored already)
    reference_db: Optional[Sequence[float]] = None  # a fixed dB reference per stem
    hold: Any = None  # where the features keep their first frames' levels, or None


class Scorer(Protocol):
    """Scores WindowBatches (engine.chunks) into ScoredWindows, and declares what it reads."""

    name: str  # "crnn", "loudness": recorded in the outputs and the progress record
    batch_size: int  # windows per call when the config leaves it unset
    pad_frames: int  # every window is padded to this many frames (masked)
    # Whether the features' dB reference is the whole stream's (the seed's power_to_db(ref=max)):
    # windows scored before the stream's loudest frame are then scored again at its end.
    whole_stream_reference: bool

    def feature_stages(self, cfg, run: FeatureRun = FeatureRun()) -> List[RestartableStage]:
        """New stages from decoded audio to the frames this scorer reads."""

    def identity(self, cfg) -> dict:
        """Every setting and model file (by content) that changes its scores: a resumed run
        must have the same."""

    def describe(self, cfg) -> dict:
        """The models it scores with, for the outputs: {"model": path, "separator": name}."""

    def score(self, batch) -> Any:
        """ScoredWindows for a WindowBatch."""

