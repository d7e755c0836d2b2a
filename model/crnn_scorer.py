"""The CRNN as a scorer: batches of padded windows in, confidences and attention peaks out."""
import os
from typing import Optional, Union

import numpy as np
import torch

from highlightsense.engine import grid
from highlightsense.engine.chunks import ScoredWindows, WindowBatch
from highlightsense.engine.files import content_identity
from highlightsense.engine.operator import FeatureRun
from highlightsense.model.crnn import TIME_STRIDE, HighlightSenseModel


class CrnnScorer:
    """Scores WindowBatch frames (B, 2, 80, 2583) with a HighlightSenseModel, batch_size windows
    per forward call, under inference mode on `device`. Confidence is sigmoid(logit) in float64;
    the peak is the window's most attended frame."""

    name = "crnn"
    pad_frames = grid.PADDED_FRAMES  # every window padded to the 60 s the model was trained on
    whole_stream_reference = True  # the seed's power_to_db(ref=np.max) over the whole VOD

    def __init__(self, model: HighlightSenseModel, device: Union[str, torch.device] = "cpu",
                 batch_size: Optional[int] = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # Unset: one window per call on a CPU, where torch's GRU runs about twice as fast one
        # window at a time (benchmarks/crnn_throughput.py), 16 elsewhere.
        self.batch_size = max(1, batch_size or (1 if self.device.type == "cpu" else 16))
        self._separator = None  # the Demucs model, once the first pass has loaded it

    def feature_stages(self, cfg, run: FeatureRun = FeatureRun()) -> list:
        """Demucs separation, or the recording's own voice and game tracks (cfg.voice_track),
        then the seed's log-mel frames of both stems. The separator is loaded once and kept for
        the passes after the first."""
        from highlightsense.operators.mel_features import MelFeatures
        from highlightsense.operators.sources.tracks import uses_tracks

        features = MelFeatures(device=self.device, reference_db=run.reference_db,
                               emit_from=run.emit_from, hold=run.hold)
        if uses_tracks(cfg):
            from highlightsense.operators.track_stems import TrackStems

            return [TrackStems(), features]
        from highlightsense.operators.separate import Separate

        separate = Separate(self._separator or cfg.separator, device=cfg.device,
                            batch_size=cfg.separator_batch, half=cfg.half)
        self._separator = separate.model
        return [separate, features]

    def identity(self, cfg) -> dict:
        separator = (None if cfg.voice_track is not None  # the tracks: in every fingerprint
                     else content_identity(cfg.separator) if os.path.isfile(cfg.separator)
                     else cfg.separator)
        return {"model": content_identity(cfg.model), "separator": separator,
                "device": str(self.device), "separator_batch": cfg.separator_batch,
                "half": cfg.half, "exact_reference": cfg.exact_reference}

    def describe(self, cfg) -> dict:
        return {"model": os.path.abspath(cfg.model),
                "separator": None if cfg.voice_track is not None else cfg.separator}

    def logits(self, batch: WindowBatch):
        """(float64 logits (B,), attention argmax step (B,)) for a batch, self.batch_size at a
        time, under inference mode on the scorer's device."""
        logits, steps = [], []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(batch.frames[i:i + self.batch_size]))
                m = torch.from_numpy(np.ascontiguousarray(batch.mask[i:i + self.batch_size]))
                out, att = self.model(x.to(self.device, torch.float32),
                                      m.to(self.device, torch.float32))
                logits.append(out[:, 0].double().cpu().numpy())
                steps.append(att.argmax(dim=1).cpu().numpy())
        return np.concatenate(logits), np.concatenate(steps)

    def score(self, batch: WindowBatch) -> ScoredWindows:
        logits, step = self.logits(batch)
        # Attention step k pools frames [16k, 16k + 16) of the window: its centre is 16k + 8
        # (rounded up), kept inside the window's real frames.
        peak = np.minimum(batch.start_frame + TIME_STRIDE * step + TIME_STRIDE // 2,
                          batch.end_frame - 1)
        return ScoredWindows(
            index=batch.index, start_frame=batch.start_frame, end_frame=batch.end_frame,
            confidence=sigmoid(logits), peak_frame=peak)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float64 sigmoid without overflow warnings for large negative logits."""
    return torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float64))).numpy()
