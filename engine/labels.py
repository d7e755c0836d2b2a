"""Labelled highlights, read and checked: what `evaluate` measures against and `train` learns from.

Three ways in, one list of Labels out:
- labels.csv (the review page writes it): source, start_sec, end_sec, label (1 a highlight, 0 not),
  optional note. `source` is the path or URL a run's highlights.json records.
- Twitch clips of one VOD: the Helix "Get Clips" JSON (data[].vod_offset, duration), each clip a
  weak positive of the VOD given with --source.
- The original training layout: folders of positive and of negative clip files; each clip is its
  own source, labelled whole.

And the one rule both commands apply to a window (window_label): positive when it overlaps a
positive label by at least half the label's length or half the window's.
"""
import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from highlightsense.engine.errors import HighlightSenseError

log = logging.getLogger("highlightsense")

COLUMNS = ("source", "start_sec", "end_sec", "label")  # `note` is optional
NEGATIVES = ("all", "labelled")  # what counts as a negative window (window_label)
# Label times may run past the decoded duration by this much (AAC priming, rounding).
DURATION_SLACK_SEC = 0.5


class LabelError(HighlightSenseError):
    """A label file that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Label:
    source: str
    start_sec: float
    end_sec: float
    label: int  # 1 a highlight, 0 not
    note: str = ""
    where: str = ""  # "labels.csv row 3", for messages

    @property
    def centre(self) -> float:
        return (self.start_sec + self.end_sec) / 2

    @property
    def length(self) -> float:
        return self.end_sec - self.start_sec


def read_labels_csv(path) -> List[Label]:
    """labels.csv's rows as Labels, each checked (numbers, end after start, label 0 or 1), and
    no span labelled both 1 and 0."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise LabelError(f"{path} lacks the column{'s' if len(missing) > 1 else ''} "
                                 f"{', '.join(missing)}; its header must be "
                                 f"{','.join(COLUMNS)},note")
            labels = [_row(path, n, row) for n, row in enumerate(reader, start=2)]
    except OSError as e:
        raise LabelError(f"cannot read labels {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise LabelError(f"{path} is not a UTF-8 CSV file of labels") from None
    if not labels:
        raise LabelError(f"{path} holds no labels (only a header)")
    check_consistent(labels)
    return labels


def _row(path: Path, line: int, row: Dict[str, str]) -> Label:
    where = f"{path.name} line {line}"
    source = (row.get("source") or "").strip()
    if not source:
        raise LabelError(f"{where}: no source; give the path or URL of the labelled VOD")
    try:
        start, end = float(row["start_sec"]), float(row["end_sec"])
    except (TypeError, ValueError):
        raise LabelError(f"{where}: start_sec {row.get('start_sec')!r} and end_sec "
                         f"{row.get('end_sec')!r} must be numbers of seconds") from None
    label = (row.get("label") or "").strip()
    if label not in ("0", "1"):
        raise LabelError(f"{where}: label {label!r} must be 1 (a highlight) or 0 (not)")
    return make_label(source, start, end, int(label), (row.get("note") or "").strip(), where)


def make_label(source: str, start: float, end: float, label: int, note: str = "",
               where: str = "") -> Label:
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise LabelError(f"{where}: times must be finite and not negative "
                         f"(start {start:g}, end {end:g})")
    if end <= start:
        raise LabelError(f"{where}: end_sec {end:g} is not after start_sec {start:g}")
    return Label(source, float(start), float(end), label, note, where)


def check_consistent(labels: Sequence[Label]) -> None:
    """A span labelled both 1 and 0 (a positive and a negative of one source that overlap) is
    refused, naming both rows."""
    by_source: Dict[str, List[Label]] = {}
    for lab in labels:
        by_source.setdefault(lab.source, []).append(lab)
    for rows in by_source.values():
        pos = [r for r in rows if r.label == 1]
        for neg in (r for r in rows if r.label == 0):
            clash = next((p for p in pos if overlap(p.start_sec, p.end_sec, neg.start_sec,
                                                    neg.end_sec) > 0), None)
            if clash is not None:
                raise LabelError(
                    f"{neg.where}: {neg.start_sec:g}-{neg.end_sec:g} s of {neg.source} is "
                    f"labelled 0, but {clash.where} labels {clash.start_sec:g}-"
                    f"{clash.end_sec:g} s of it 1; fix one of the two rows")


def read_twitch_clips(path, source: str) -> List[Label]:
    """The Helix "Get Clips" response (one VOD's clips) as weak positives of `source`: each clip
    spans vod_offset to vod_offset + duration. Clips without a vod_offset (the VOD was deleted,
    or Twitch has not placed them yet) are skipped, with a warning."""
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise LabelError(f"cannot read Twitch clips {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError):
        raise LabelError(f"{path} is not JSON; give the Helix Get Clips response") from None
    clips = data.get("data") if isinstance(data, dict) else None
    if not isinstance(clips, list):
        raise LabelError(f"{path} has no \"data\" list: not a Helix Get Clips response")
    labels, unplaced = [], 0
    for i, clip in enumerate(clips):
        where = f"{path.name} data[{i}]"
        if not isinstance(clip, dict):
            raise LabelError(f"{where} is not a clip object")
        offset, duration = clip.get("vod_offset"), clip.get("duration")
        if offset is None:
            unplaced += 1
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   for v in (offset, duration)):
            raise LabelError(f"{where}: vod_offset {offset!r} and duration {duration!r} must "
                             f"be numbers of seconds")
        note = str(clip.get("title") or clip.get("id") or "")
        labels.append(make_label(source, offset, offset + duration, 1, note, where))
    if unplaced:
        log.warning("%s: %d clip%s without a vod_offset skipped", path.name, unplaced,
                    "" if unplaced == 1 else "s")
    if not labels:
        raise LabelError(f"{path} holds no clip with a vod_offset: nothing to label {source}")
    return labels


def read_clip_folders(positive_dir: Optional[str], negative_dir: Optional[str],
                      duration_of) -> List[Label]:
    """Every media file in the folders as one whole-clip label (1 in positive_dir, 0 in
    negative_dir), its own source. duration_of(path) gives a file's length in seconds."""
    labels = []
    for folder, value in ((positive_dir, 1), (negative_dir, 0)):
        if folder is None:
            continue
        folder = Path(folder)
        if not folder.is_dir():
            raise LabelError(f"clip folder {folder} is not a folder")
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise LabelError(f"clip folder {folder} holds no files")
        for clip in files:
            labels.append(make_label(str(clip.resolve()), 0.0, duration_of(str(clip)), value,
                                     where=str(clip)))
    return labels


def check_within(labels: Sequence[Label], source: str, duration_sec: Optional[float]) -> None:
    """Labels of `source` must lie within its media: one past the end names its row."""
    if duration_sec is None:
        return
    for lab in labels:
        if lab.end_sec > duration_sec + DURATION_SLACK_SEC:
            raise LabelError(f"{lab.where}: {lab.start_sec:g}-{lab.end_sec:g} s is past the end "
                             f"of {source} ({duration_sec:.1f} s long)")


def match_sources(labels: Sequence[Label], known: Sequence[str]) -> Dict[str, List[Label]]:
    """Labels grouped by the known source (a run's recorded path or URL) each one names: the
    same string, else the same absolute path, else a unique file name (with a warning).
    A label that names no known source is refused, naming its row."""
    exact = {k: k for k in known}
    absolute = {os.path.abspath(k): k for k in known if "://" not in k}
    by_name: Dict[str, List[str]] = {}
    for k in known:
        by_name.setdefault(_file_name(k), []).append(k)
    out: Dict[str, List[Label]] = {k: [] for k in known}
    warned = set()
    for lab in labels:
        hit = exact.get(lab.source)
        if hit is None and "://" not in lab.source:
            hit = absolute.get(os.path.abspath(lab.source))
        if hit is None:
            named = by_name.get(_file_name(lab.source), [])
            if len(named) == 1:
                hit = named[0]
                if lab.source not in warned:
                    warned.add(lab.source)
                    log.warning("labels of %s matched to %s by file name", lab.source, hit)
            elif len(named) > 1:
                raise LabelError(f"{lab.where}: source {lab.source} matches several by file "
                                 f"name ({', '.join(named)}); give its full path or URL")
        if hit is None:
            shown = ", ".join(_file_name(k) for k in known[:4]) + (" ..." if len(known) > 4
                                                                    else "")
            raise LabelError(f"{lab.where}: unknown source {lab.source} (the runs are of "
                             f"{shown}); give the path or URL the run's highlights.json records")
        out[hit].append(lab)
    return out


def _file_name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1]


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def window_label(start: float, end: float, labels: Sequence[Label],
                 negatives: str = "all") -> Optional[int]:
    """A window's label by evaluate's rule: 1 when it overlaps a positive label by at least half
    the label's length or half the window's; None (left out) when it overlaps one by less. Else,
    with negatives "all", 0; with "labelled", 0 only when it overlaps a label-0 span by the same
    rule, else None (unlabelled windows are then not assumed to be negatives)."""
    length = end - start
    pos = [overlap(start, end, lab.start_sec, lab.end_sec) / min(lab.length, length)
           for lab in labels if lab.label == 1]
    if any(share >= 0.5 for share in pos):
        return 1
    if any(share > 0 for share in pos):
        return None
    if negatives == "all":
        return 0
    neg = (overlap(start, end, lab.start_sec, lab.end_sec) / min(lab.length, length)
           for lab in labels if lab.label == 0)
    return 0 if any(share >= 0.5 for share in neg) else None
