"""The progress record: what lets an interrupted `detect` continue where it stopped.

While `detect` runs it keeps `.highlightsense-progress.json` in the output folder, rewritten
atomically every few seconds and when the run stops: the window scores so far, the state the
streaming stages need to restart exactly (the decoder's sync points, the features' dB reference
history) and a fingerprint of the input and of every setting that changes a score. Run the same
command again and it continues from the last record: the stages restart just early enough for
their buffers to fill (engine.operator.restart_sample), and the result equals an uninterrupted
run's. A record made for another input or other settings is refused, or discarded with --restart.
"""
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from highlightsense.engine import records
from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.files import OutputError, write_text
from highlightsense.engine.operator import Scorer
from highlightsense.operators.select import WindowScore

log = logging.getLogger("highlightsense")

RECORD_NAME = ".highlightsense-progress.json"
FORMAT = 2  # 2: stage states by name (1 had the features' history apart)


# What a record holds, checked before any of it is used (engine.records). Windows are
# [index, start_sec, end_sec, confidence, peak_sec]; a stage's own state is checked against the
# stage's state_schema when it is restored (ProgressRecord.state_for).
_WINDOW = {"type": "array", "minItems": 5, "maxItems": 5,
           "prefixItems": [records.COUNT, records.SECONDS, records.SECONDS, {"type": "number"},
                           records.SECONDS]}
_WINDOWS = {"type": "array", "items": _WINDOW}
SCHEMA = {
    "type": "object",
    "required": ["format", "fingerprint", "phase", "windows", "rescored", "source", "stages",
                 "reference_db", "exact_from", "info", "position_sec", "resumes"],
    "properties": {
        "format": {"const": FORMAT},
        "fingerprint": {"type": "object", "required": ["input", "scoring"],
                        "properties": {"input": {"type": "object"},
                                       "scoring": {"type": "object"}}},
        "phase": {"enum": [1, 2, 3]},
        "windows": _WINDOWS,
        "rescored": _WINDOWS,
        "source": {"type": "object", "properties": {"sync_points": {
            "type": "array", "items": {"type": "array", "minItems": 3, "maxItems": 3,
                                       "prefixItems": [{"type": "integer"}, records.COUNT,
                                                       records.COUNT]}}}},
        "stages": {"type": "object", "additionalProperties": {"type": "object"}},
        "reference_db": {"anyOf": [{"type": "null"}, {"type": "array", "minItems": 1,
                                                      "maxItems": 16, "items": {"type": "level"}}]},
        "exact_from": {"anyOf": [{"type": "null"}, records.COUNT]},
        "info": {"type": "object"},
        "position_sec": records.SECONDS,
        "resumes": {"type": "array", "items": {"type": "object"}},
    },
    # Once the first pass is done the record says what it learnt of the source.
    "if": {"properties": {"phase": {"const": 1}}},
    "else": {"properties": {"info": records.SOURCE_INFO}},
}


def source_name(input_path: str) -> str:
    """How outputs name this run's input: a local file by its absolute path, else as given."""
    return os.path.abspath(input_path) if os.path.exists(input_path) else input_path


def _file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(input_path: str, cfg: Config, scorer: Scorer) -> dict:
    """The input and every setting that changes a score (not the selection settings: those
    only choose among the scores, and may change between an interruption and the resume)."""
    from highlightsense import __version__

    source = _file_identity(input_path) if os.path.isfile(input_path) else {"url": input_path}
    scoring = {"version": __version__, "scorer": scorer.name, "window_sec": cfg.window_sec,
               "stride_sec": cfg.stride_sec, "audio_stream": cfg.audio_stream,
               "batch_size": cfg.batch_size, **scorer.identity(cfg),
               # Resolved stream indexes (engine.detect resolves --tracks auto first).
               "voice_track": cfg.voice_track, "game_track": cfg.game_track}
    return {"input": source, "scoring": scoring}


def _differences(old: dict, new: dict, prefix: str = "") -> List[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _windows_out(windows: List[WindowScore]) -> list:
    return [[w.index, w.start_sec, w.end_sec, w.confidence, w.peak_sec] for w in windows]


def _windows_in(rows: list) -> List[WindowScore]:
    return [WindowScore(int(i), float(s), float(e), float(c), float(p)) for i, s, e, c, p in rows]


def _inconsistency(data: dict, source: str) -> str:
    """What the schema cannot see that makes a record not this run's: windows out of order,
    or another source named than the one this run was given."""
    for key in ("windows", "rescored"):
        if any(row[0] != i for i, row in enumerate(data[key])):
            return f"$.{key}: not numbered 0, 1, 2, ..."
    levels = [len(state["reference_db"]) for state in data["stages"].values()
              if isinstance(state.get("reference_db"), list)]
    if data["reference_db"] is not None and levels[:1] != [len(data["reference_db"])]:
        return "$.reference_db: not one level per stem of the features' state"
    named = data["info"].get("source")
    if named is not None and named != source:
        shown = named if len(named) <= 100 else named[:97] + "..."
        return f"$.info.source: names {shown!r}, not this run's input"
    return ""


@dataclass
class ProgressRecord:
    """Where a run stands. Phases: 1 (scoring), 2 (the second pass: engine.second_pass),
    3 (scored: only the selection, clips and summary remain)."""

    path: Path
    fingerprint: dict
    phase: int = 1
    windows: List[WindowScore] = field(default_factory=list)  # the first pass's, in order
    rescored: List[WindowScore] = field(default_factory=list)  # the second pass's, in order
    source: dict = field(default_factory=dict)  # its sync points (SourceInfo.sync_points)
    stages: Dict[str, dict] = field(default_factory=dict)  # {stage.name: stage.state()}
    # Once the first pass is done, for the second (engine.second_pass): the whole stream's dB
    # reference, and the first frame made under it.
    reference_db: Optional[List[float]] = None
    exact_from: Optional[int] = None
    info: dict = field(default_factory=dict)  # what the first pass learnt of the source
    position_sec: float = 0.0  # stream time the stages had reached
    resumes: List[dict] = field(default_factory=list)  # where each resume began, what it redid
    enabled: bool = True  # False: nothing is saved (a URL input cannot be reopened at a sample)
    on_save: Optional[Callable[["ProgressRecord"], None]] = None  # told of each write

    @classmethod
    def begin(cls, out_dir: Path, print_: dict, restart: bool, source: str
              ) -> "ProgressRecord":
        """The folder's record for this run: the interrupted run's when it matches, else new.
        A record for a different input or settings, or one this tool did not write, is refused
        unless `restart`. `source`: this run's input (source_name), the only source its outputs
        name: a record's own is never taken."""
        path = Path(out_dir) / RECORD_NAME
        record = cls(path, print_)
        if not path.exists() and not path.is_symlink():
            return record
        if restart:
            log.info("--restart: starting over, saved progress discarded")
            return record
        again = "pass --restart to start over (the run's saved progress is then lost)"
        try:
            data = records.read_json(path, constants=("-Infinity",))
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e).split(":")[0]
            raise records.RecordError(f"{path} is unreadable ({reason}); {again}") from None
        records.check(data, SCHEMA, f"{path}", again)
        wrong = _inconsistency(data, source)
        if wrong:
            raise records.RecordError(f"{path} is not one this tool wrote for this run "
                                      f"({wrong}); {again}")
        changed = _differences(data["fingerprint"], print_)
        if changed:
            raise HighlightSenseError(
                f"{out_dir} holds an interrupted run of a different input or settings (changed: "
                f"{', '.join(changed)}); pass --restart to discard it and start over, or "
                f"choose another --out")
        record.phase = data["phase"]
        record.windows = _windows_in(data["windows"])
        record.rescored = _windows_in(data["rescored"])
        record.source = data["source"]
        record.stages = data["stages"]
        record.reference_db = data["reference_db"]
        record.exact_from = data["exact_from"]
        record.info = dict(data["info"], source=source) if data["info"] else {}
        record.position_sec = data["position_sec"]
        record.resumes = data["resumes"]
        return record

    def state_for(self, stage) -> Optional[dict]:
        """The saved state of `stage` (None: none saved), checked against what the stage
        declares (RestartableStage.state_schema) before it is restored."""
        if stage.name not in self.stages:
            return None
        return records.check(self.stages[stage.name], stage.state_schema,
                             f"{self.path} ($.stages.{stage.name})",
                             "pass --restart to start over (the run's saved progress is then "
                             "lost)")

    def note_resume(self, phase: int, window: int, window_sec: float, decode_from_sec: float
                    ) -> None:
        """Log and keep where a resume began: it decodes again from decode_from_sec, the stages'
        warm-up before the window it scores first, plus what the record had not yet kept."""
        redone = {"phase": phase, "window": window, "decode_from_sec": decode_from_sec,
                  "warmup_sec": window_sec - decode_from_sec,
                  "recorded_until_sec": self.position_sec}
        self.resumes.append(redone)
        log.info("resuming %sat window %d (%.1f s): decoding again from %.1f s, %.1f s of "
                 "warm-up", "the second pass " if phase == 2 else "", window, window_sec,
                 decode_from_sec, window_sec - decode_from_sec)

    def save(self) -> None:
        if not self.enabled:
            return
        data = {"format": FORMAT, "fingerprint": self.fingerprint, "phase": self.phase,
                "windows": _windows_out(self.windows), "rescored": _windows_out(self.rescored),
                "source": self.source, "stages": self.stages,
                "reference_db": self.reference_db, "exact_from": self.exact_from,
                "info": self.info,
                "position_sec": self.position_sec, "resumes": self.resumes}
        try:
            write_text(self.path, json.dumps(data, allow_nan=True))
        except (OSError, OutputError) as e:
            reason = getattr(e, "reason", None) or e.strerror
            raise HighlightSenseError(
                f"cannot write the progress record {self.path}: {reason}; free space or fix "
                f"the folder, then run the same command again to resume from the last record"
            ) from None
        if self.on_save is not None:
            self.on_save(self)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Checkpoints:
    """Saves the record from a running pass every `every_sec` seconds and when it stops.

    `snapshot()` reads the stages' state; it runs on the event loop while the stages work in
    their threads, so it copies what it reads, in an order that keeps the copy consistent:
    windows first, then the stages' states (each copies what it hands over).
    """

    def __init__(self, record: ProgressRecord, every_sec: float, snapshot):
        self.record, self.every_sec, self.snapshot = record, every_sec, snapshot
        self._last = time.monotonic()
        self._broken = False

    def __call__(self, metrics) -> None:
        now = time.monotonic()
        if self._broken or (metrics.finished is None and now - self._last < self.every_sec):
            return
        self._last = now
        self.snapshot(self.record)
        self.record.position_sec = metrics.position_sec
        try:
            self.record.save()
        except HighlightSenseError:
            self._broken = True  # report once; the last good record stays
            raise
