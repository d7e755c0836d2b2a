"""The run's tables, with the seed's columns, each written atomically.

raw_window_scores.csv  every window: window_index, start_sec, end_sec, confidence (+ peak_sec)
final_clips_metadata.csv  the chosen clips: the seed's columns (+ peak and the real cut times)
highlights.json  everything above plus the run's settings; written last, so its presence means
                 the run finished
(scores.png, the plot beside them: sinks/plot.py)
"""
import csv
import io
import json
from pathlib import Path
from typing import List, Optional, Sequence

from highlightsense.engine.files import write_text
from highlightsense.engine.timecode import hms as to_timestamp  # the seed's HH:MM:SS
from highlightsense.operators.select import Selection, WindowScore

SCORES_CSV = "raw_window_scores.csv"
CLIPS_CSV = "final_clips_metadata.csv"
SUMMARY_JSON = "highlights.json"
SCORE_COLUMNS = ["window_index", "start_sec", "end_sec", "confidence", "peak_sec"]
CLIP_COLUMNS = ["rank", "start_sec", "end_sec", "start_ts", "end_ts", "duration_sec",
                "confidence", "clip_path", "peak_sec", "clip_start_sec", "clip_end_sec", "cut"]


def _csv_text(columns: Sequence[str], rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def write_scores(out_dir: Path, windows: Sequence[WindowScore]) -> Path:
    # repr() keeps full float precision, so `select` re-runs on exactly the scores detect saw.
    rows = ([w.index, repr(w.start_sec), repr(w.end_sec), repr(w.confidence), repr(w.peak_sec)]
            for w in windows)
    path = Path(out_dir) / SCORES_CSV
    write_text(path, _csv_text(SCORE_COLUMNS, rows))
    return path


def read_scores(out_dir: Path) -> List[WindowScore]:
    with open(Path(out_dir) / SCORES_CSV, newline="") as f:
        return [WindowScore(int(r["window_index"]), float(r["start_sec"]), float(r["end_sec"]),
                            float(r["confidence"]), float(r.get("peak_sec") or "nan"))
                for r in csv.DictReader(f)]


def highlight_rows(selection: Selection, clips: Optional[list]) -> List[dict]:
    """One dict per chosen clip, rank order, with CLIP_COLUMNS as keys."""
    rows = []
    for rank, w in enumerate(selection.top, start=1):
        clip = clips[rank - 1] if clips else None
        rows.append({
            "rank": rank, "start_sec": w.start_sec, "end_sec": w.end_sec,
            "start_ts": to_timestamp(w.start_sec), "end_ts": to_timestamp(w.end_sec),
            "duration_sec": w.end_sec - w.start_sec, "confidence": w.confidence,
            "clip_path": str(clip.path) if clip else "", "peak_sec": w.peak_sec,
            "clip_start_sec": clip.start_sec if clip else "",
            "clip_end_sec": clip.end_sec if clip else "",
            "cut": clip.mode if clip else "",
        })
    return rows


def write_clips_csv(out_dir: Path, rows: List[dict]) -> Path:
    path = Path(out_dir) / CLIPS_CSV
    write_text(path, _csv_text(CLIP_COLUMNS, (
        [repr(v) if isinstance(v, float) else v for v in (row[c] for c in CLIP_COLUMNS)]
        for row in rows)))
    return path


def write_summary(out_dir: Path, summary: dict) -> Path:
    path = Path(out_dir) / SUMMARY_JSON
    write_text(path, json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return path


def read_summary(out_dir: Path) -> dict:
    with open(Path(out_dir) / SUMMARY_JSON) as f:
        return json.load(f)
