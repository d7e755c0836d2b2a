"""Recall of the loudness scorer on synthetic VODs with known moments and distractors.

    python -m highlightsense.benchmarks.loudness_recall --minutes 10 --seed 0 [1 2 3 4]

Generates a SyntheticVod, streams it in 1-s chunks through LoudnessFeatures, the seed's windows
(30 s every 215 frames) and LoudnessScorer, then selects clips as the seed does (percentile
threshold, greedy NMS, top N: operators.select) at several percentiles. Prints, per percentile:
the clips kept, recall (moments entirely inside a kept clip), and what each clip sits on: a whole
moment, part of one, music, a bang, or plain background.
"""
import argparse
import time
import numpy as np

from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine import grid
from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.config import Config
from highlightsense.model.loudness import LoudnessScorer
from highlightsense.operators.select import WindowScore, select_highlights
from highlightsense.operators.windows import Windows

PERCENTILES = (99, 95, 90, 85, 80, 75)
KINDS = ("moment", "partial", "music", "bang", "bed")


def score_vod(vod: SyntheticVod, scorer: LoudnessScorer = None, chunk_sec: float = 1.0,
              window_sec: float = 30.0, stride_sec: float = 5.0):
    """Streams the VOD through features, windows and scorer: (start_sec, end_sec, confidence)."""
    scorer = scorer or LoudnessScorer(window_sec)
    [features] = scorer.feature_stages()
    windows = Windows.for_scorer(Config(window_sec=window_sec, stride_sec=stride_sec), scorer)
    scored = []

    def through(frame_chunks):
        for fc in frame_chunks:
            for batch in windows.process(fc):
                scored.append(scorer.score(batch))

    step = int(round(chunk_sec * grid.AUDIO_RATE))
    position = 0
    for block in vod.blocks(10.0):
        for i in range(0, block.shape[1], step):  # the decoder's chunks
            samples = block[:, i:i + step]
            through(features.process(AudioChunk(samples, grid.AUDIO_RATE, position)))
            position += samples.shape[1]
    through(features.flush())
    for batch in windows.flush():
        scored.append(scorer.score(batch))
    start = np.concatenate([s.start_sec for s in scored])
    end = np.concatenate([s.end_sec for s in scored])
    confidence = np.concatenate([s.confidence for s in scored])
    return start, end, confidence


def classify(start: float, end: float, vod: SyntheticVod) -> str:
    """What a clip sits on, the first that applies: a whole moment, part of one, music, a bang."""
    if any(start <= s and e <= end for s, e in vod.moments):
        return "moment"
    if any(s < end and start < e for s, e in vod.moments):
        return "partial"
    if any(s < end and start < e for s, e in vod.music):
        return "music"
    if any(s < end and start < e for s, e in vod.bangs):
        return "bang"
    return "bed"


def recall_table(vod: SyntheticVod, start, end, confidence, percentiles=PERCENTILES,
                 nms_window: float = 10.0, top_n: int = 1000):
    """Per percentile: (percentile, clips, recall, {kind: clips})."""
    windows = [WindowScore(i, float(start[i]), float(end[i]), float(confidence[i]), float(start[i]))
               for i in range(len(start))]
    rows = []
    for p in percentiles:
        kept = select_highlights(windows, p, nms_window, top_n).top
        found = sum(any(w.start_sec <= s and e <= w.end_sec for w in kept) for s, e in vod.moments)
        kinds = {kind: 0 for kind in KINDS}
        for w in kept:
            kinds[classify(w.start_sec, w.end_sec, vod)] += 1
        recall = found / len(vod.moments) if vod.moments else 1.0
        rows.append((p, len(kept), recall, kinds))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--chunk-sec", type=float, default=1.0, help="decoder chunk length")
    parser.add_argument("--top-n", type=int, default=1000)
    args = parser.parse_args(argv)

    totals = {p: [0, 0, 0, {kind: 0 for kind in KINDS}] for p in PERCENTILES}  # clips, found, all
    for seed in args.seed:
        vod = SyntheticVod(args.minutes * 60, seed=seed)
        t0 = time.perf_counter()
        start, end, confidence = score_vod(vod, chunk_sec=args.chunk_sec)
        wall = time.perf_counter() - t0
        print(f"seed {seed}: {args.minutes:g} min, {len(vod.moments)} moments, "
              f"{len(vod.music)} music sections, {len(vod.bangs)} bangs, {len(start)} windows, "
              f"generated and scored in {wall:.1f} s")
        print(_header())
        for p, clips, recall, kinds in recall_table(vod, start, end, confidence,
                                                    top_n=args.top_n):
            print(_row(p, clips, recall, kinds))
            total = totals[p]
            total[0] += clips
            total[1] += round(recall * len(vod.moments))
            total[2] += len(vod.moments)
            for kind in KINDS:
                total[3][kind] += kinds[kind]
        print()
    if len(args.seed) > 1:
        print(f"all {len(args.seed)} seeds:")
        print(_header())
        for p, (clips, found, moments, kinds) in totals.items():
            print(_row(p, clips, found / max(moments, 1), kinds))


def _header() -> str:
    return "  pct  clips  recall  " + "  ".join(f"{kind:>7}" for kind in KINDS)


def _row(p, clips, recall, kinds) -> str:
    return f"  {p:>3}  {clips:>5}  {recall:>6.0%}  " + "  ".join(
        f"{kinds[kind]:>7}" for kind in KINDS)


if __name__ == "__main__":
    main()
