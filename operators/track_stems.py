"""TrackStems: where Separate stands when the recording has its own voice and game tracks. The
source (operators/sources/tracks.py) already carries them apart, so this stage only hands on
the stems the features read, in Separate's order, as a view: no look-ahead, no state."""
from typing import List

from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.operator import RestartableStage
from highlightsense.operators.separate import STEMS
from highlightsense.operators.sources.tracks import TRACK_STEMS


class TrackStems(RestartableStage):
    """AudioChunk (3 stems, 2, n) with stems TRACK_STEMS (voice, game, mix) in, AudioChunk
    (2 stems, 2, n) with stems ("voice", "game") out, as Separate emits them."""

    name = "tracks"
    threaded = False  # a view of the input: nothing to compute

    @property
    def lookahead_samples(self) -> int:
        return 0

    def restart_sample(self, first_needed: int) -> int:
        return first_needed

    def process(self, chunk: AudioChunk) -> List[AudioChunk]:
        if tuple(chunk.stems) != TRACK_STEMS:
            raise ValueError(f"the tracks stage takes chunks with stems {TRACK_STEMS} (a file's "
                             f"own tracks), not {tuple(chunk.stems) or 'a plain mix'}")
        assert TRACK_STEMS[:len(STEMS)] == STEMS  # so the stems are a view, not a copy
        return [AudioChunk(chunk.samples[:len(STEMS)], chunk.rate, chunk.start, STEMS)]
