"""The weights-free scorer: "audio excitement", loudness that stands out from its surroundings."""
import numpy as np

from highlightsense.engine import grid
from highlightsense.engine.chunks import ScoredWindows, WindowBatch
from highlightsense.engine.operator import FeatureRun
from highlightsense.operators.loudness_features import FEATURES, LoudnessFeatures


class LoudnessScorer:
    """Scores a window by how much, and for how long, the stream is louder than usual there.

    What it measures. Its input is LoudnessFeatures' `sustained_excess_db`: per frame, the level
    held over the surrounding second (a 1-s moving median) minus the local background (the median
    of 1-s block loudness over +-60 s). A window's score is the mean over its real frames of

        g(x) = knee * softplus((min(x, cap_db) - margin_db) / knee)

    i.e. the dB by which the sound stays above its background by more than `margin_db`, counted
    up to `cap_db`: about (x - margin) above the margin, fading smoothly to 0 below it. The
    confidence is 1 - exp(-score / scale_db): monotone, near 0 for nothing, and 0.63 for a window
    averaging `scale_db` dB, e.g. a 10-s outburst held 9 dB above its background in a 30-s
    window (6 dB past the margin, a third of the time).

    Why. Highlights in game streams are moments when the streamer and game get loud compared with
    the minutes around them: shouting, explosions, crowds. Measuring against the local median
    means a long loud stretch (minutes of music, a loud game) becomes its own background and
    scores nothing; the 1-s median ignores isolated bangs shorter than half a second; averaging
    over the whole window rewards windows that hold all of a moment rather than part of it; the
    cap keeps one extreme second from outweighing a sustained outburst; the smooth margin
    ignores the few dB that ordinary talk and game noise wander by, yet leaves no ties.

    Confidence stays below 1 in float64 (at most about 1 - exp(-(cap - margin) / scale), 0.9998)
    and above 0 unless a window sits some 700 dB below its margin, so windows rank without ties.
    Tuned on benchmarks/loudness_recall.py (synthetic VODs with known moments, music and bangs).
    """

    name = "loudness"
    whole_stream_reference = False  # its levels are relative to their surroundings
    batch_size = 16  # windows per call: numpy scores a batch at once
    channels = FEATURES  # the features it reads, in LoudnessFeatures' order

    def __init__(self, window_sec: float = 30.0, margin_db: float = 3.0, cap_db: float = 20.0,
                 knee_db: float = 1.0, scale_db: float = 2.0):
        self.pad_frames = grid.window_frames(window_sec)  # no 60-s padding: it counts real frames
        self.margin_db = margin_db
        self.cap_db = cap_db
        self.knee_db = knee_db
        self.scale_db = scale_db
        self._channel = FEATURES.index("sustained_excess_db")

    def feature_stages(self, cfg=None, run: FeatureRun = FeatureRun()) -> list:
        """The loudness features of the mix (no separation). A resumed pass needs nothing
        more: its windows drop the frames before the first window they score."""
        return [LoudnessFeatures()]

    def identity(self, cfg) -> dict:
        return {}  # no model: window_sec and stride_sec (in every fingerprint) say it all

    def describe(self, cfg) -> dict:
        return {"model": None, "separator": None}

    def frame_excitement(self, sustained_excess_db: np.ndarray) -> np.ndarray:
        """g(x) above: dB of sustained excess beyond the margin, soft-floored at 0, capped."""
        x = (np.minimum(sustained_excess_db, self.cap_db) - self.margin_db) / self.knee_db
        return self.knee_db * np.logaddexp(0.0, x)

    def score(self, batch: WindowBatch) -> ScoredWindows:
        if batch.frames.ndim != 3 or batch.frames.shape[1] != len(FEATURES):
            raise ValueError(f"loudness scorer wants frames (B, {len(FEATURES)}, T) of "
                             f"{', '.join(FEATURES)}; got {batch.frames.shape}")
        sustained = batch.frames[:, self._channel, :].astype(np.float64)
        real = batch.mask > 0
        excitement = np.where(real, self.frame_excitement(sustained), 0.0)
        mean_db = excitement.sum(axis=1) / np.maximum(real.sum(axis=1), 1)
        confidence = -np.expm1(-mean_db / self.scale_db)  # 1 - exp(-x), exact for tiny x
        peak = np.argmax(np.where(real, sustained, -np.inf), axis=1)
        start = np.asarray(batch.start_frame)
        return ScoredWindows(index=np.asarray(batch.index), start_frame=start,
                             end_frame=np.asarray(batch.end_frame), confidence=confidence,
                             peak_frame=start + peak)
