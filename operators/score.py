"""Score: runs a scorer (the CRNN or the loudness heuristic) on batches of windows."""
from typing import List

from highlightsense.engine.chunks import ScoredWindows, WindowBatch
from highlightsense.engine.operator import Operator


class Score(Operator):
    name = "score"

    def __init__(self, scorer):
        self.scorer = scorer  # anything with score(WindowBatch) -> ScoredWindows

    def process(self, batch: WindowBatch) -> List[ScoredWindows]:
        return [self.scorer.score(batch)]
