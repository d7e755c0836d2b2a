"""Selection for live streams: threshold and NMS decided window by window, as scores arrive.

Threshold, one of:
  - absolute: a window is a candidate when its confidence >= the threshold;
  - rolling percentile: a window is a candidate when its confidence >= the P-th percentile of the
    scores of the windows that ended in the last `horizon_sec` seconds, itself included (fewer
    windows at the start of a stream). The seed's percentile is over the whole VOD, which a live
    stream does not know yet.

NMS gives the seed's greedy result (apply_nms: by confidence, earlier first on ties, a window
dropped when it overlaps a kept one or starts within nms_window of it) over the windows seen.
A window is decided as soon as nothing still to come can change its fate: a window that starts
later can only conflict with candidates starting within R = max(window length, nms_window) of it
(and may outrank any of them), and a change spreads only from a candidate to the lower-ranked
candidates it conflicts with. So a candidate is open while it starts within R of the next window
to come, or a higher-ranked candidate it conflicts with is open, unless a decided highlight (or
a kept candidate that is not open) outranks and suppresses it: then it stays suppressed whatever
comes. Every other candidate is final. Otherwise it is decided when
the stream has run `max_delay_sec` past its end: then the current greedy answer is taken and the
decision marked forced (a kept forced window then holds against later, higher-scoring ones). At
end of stream every candidate is final.

The last 'top N' step of the seed needs the whole VOD: live, every kept window is a highlight.
select_above() is the offline counterpart with an absolute threshold, for `detect --threshold`.
"""
from collections import deque
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

from highlightsense.engine import grid
from highlightsense.engine.chunks import ScoredWindows, Tick
from highlightsense.engine.operator import ClockReader
from highlightsense.operators.select import (Selection, WindowScore, _suppresses, apply_nms,
                                             window_scores)

EPS = 1e-9


def select_above(windows: Sequence[WindowScore], threshold: float, nms_window: float,
                 top_n: int) -> Selection:
    """The seed's selection with an absolute threshold in place of its percentile."""
    above = [w for w in windows if w.confidence >= threshold]
    kept = apply_nms(above, nms_window)
    top = sorted(kept, key=lambda d: d.confidence, reverse=True)[:top_n]
    return Selection(float(threshold), above, kept, top)


@dataclass(frozen=True)
class Decision:
    """A window chosen as a highlight."""

    window: WindowScore
    threshold: float  # the threshold it passed
    forced: bool  # decided at max_delay, before the outcome was certain
    decided_at_sec: float  # stream time received when it was decided

    @property
    def delay_sec(self) -> float:
        """How far the stream had run past the window's end when it was decided."""
        return self.decided_at_sec - self.window.end_sec


class OnlineSelect(ClockReader):
    """The last stage of `watch`: takes ScoredWindows, calls on_highlight(Decision) for each
    highlight as soon as it is decided (see the module). The stream time received so far, for
    max_delay, comes in band: the pipeline's Ticks (on_tick), which pass the stages' look-ahead,
    so max_delay applies between arrivals of scores too."""

    name = "select"
    threaded = False  # little work: on the event loop

    def __init__(self, nms_window: float, window_sec: float, stride_sec: float,
                 on_highlight: Callable[[Decision], None], threshold: Optional[float] = None,
                 percentile: Optional[float] = None, horizon_sec: float = 1800.0,
                 max_delay_sec: float = float("inf")):
        if (threshold is None) == (percentile is None):
            raise ValueError("give an absolute threshold or a percentile, one of the two")
        self.nms_window = nms_window
        self.reach = max(grid.frames_to_sec(grid.window_frames(window_sec)), nms_window)
        self.stride_sec = grid.frames_to_sec(grid.stride_frames(stride_sec))
        self.on_highlight = on_highlight
        self.threshold = threshold
        self.percentile = percentile
        self.horizon_sec = horizon_sec
        self.max_delay_sec = max_delay_sec
        self.windows_seen = 0
        self.decisions: List[Decision] = []
        self._recent = deque()  # (end_sec, confidence) within the horizon
        self._pending: List[tuple] = []  # (window, threshold) candidates not yet decided
        self._kept: List[WindowScore] = []  # decided highlights still near enough to matter
        self._frontier = 0.0  # start of the next window to come
        self._seen_until = 0.0
        self._clock = 0.0  # the stream time of the last Tick

    def process(self, scored: ScoredWindows) -> list:
        for window in window_scores(scored):
            self._add(window)
        self._decide(final=False)
        return []

    def flush(self) -> list:
        self._decide(final=True)
        return []

    def on_tick(self, tick: Tick) -> list:
        """Decide what max_delay forces now (the stream moves on between scores)."""
        self._clock = max(self._clock, tick.stream_sec)
        if self._pending:
            self._decide(final=False)
        return []

    @property
    def undecided(self) -> int:
        return len(self._pending)

    def _add(self, w: WindowScore) -> None:
        self.windows_seen += 1
        self._frontier = max(self._frontier, w.start_sec + self.stride_sec)
        self._seen_until = max(self._seen_until, w.end_sec)
        threshold = self.threshold
        if threshold is None:
            self._recent.append((w.end_sec, w.confidence))
            while self._recent and self._recent[0][0] <= w.end_sec - self.horizon_sec:
                self._recent.popleft()
            threshold = float(np.percentile([c for _, c in self._recent], self.percentile))
        if w.confidence >= threshold:
            self._pending.append((w, threshold))

    def _decide(self, final: bool) -> None:
        if not self._pending:
            return
        nms = self.nms_window
        ranked = sorted(self._pending, key=lambda p: (-p[0].confidence, p[0].index))
        # The greedy answer over what is known; decided highlights hold their place.
        kept_now, keeps = list(self._kept), {}
        for w, _ in ranked:
            keeps[w.index] = all(not _suppresses(k, w, nms) for k in kept_now)
            if keeps[w.index]:
                kept_now.append(w)
        # Candidates whose fate a window still to come could change (see the module).
        open_ = set()
        if not final:
            edge = self._frontier - self.reach
            for i, (w, _) in enumerate(ranked):
                if w.start_sec > edge + EPS:
                    open_.add(w.index)
                    continue
                above = [v for v, _ in ranked[:i] if _suppresses(v, w, nms)]
                held = any(_suppresses(k, w, nms) for k in self._kept) or any(
                    keeps[v.index] and v.index not in open_ for v in above)
                if not held and any(v.index in open_ for v in above):
                    open_.add(w.index)
        now = max(self._seen_until, self._clock)  # the stream time received so far
        still = []
        for w, threshold in self._pending:  # in window order
            forced = w.index in open_
            if forced and now - w.end_sec < self.max_delay_sec:
                still.append((w, threshold))
                continue
            if keeps[w.index]:
                decision = Decision(w, threshold, forced, max(now, w.end_sec))
                self._kept.append(w)
                self.decisions.append(decision)
                self.on_highlight(decision)
        self._pending = still
        # Highlights far behind everything still to decide can no longer suppress anything.
        horizon = min([w.start_sec for w, _ in still] + [self._frontier]) - self.reach
        self._kept = [k for k in self._kept if k.start_sec > horizon - EPS]
