"""Choosing the highlights from the window scores, and the outputs that follow: what `detect`
ends with, and the whole of `select` (choose again from a finished run's saved scores, new
threshold, top N or NMS window, without touching the audio)."""
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from highlightsense.engine import records
from highlightsense.engine.config import SELECTION_KEYS, Config, given_keys, load_config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.files import check_own_folder, own_folder
from highlightsense.engine.timecode import hms, plural
from highlightsense.operators.online_select import select_above
from highlightsense.operators.select import (Selection, WindowScore, apply_nms,
                                             select_highlights)
from highlightsense.operators.sinks import plot, tables

log = logging.getLogger("highlightsense")

# highlights.json's keys that describe the run's result, not its source: `select` writes them
# anew.
_RESULT_KEYS = ("settings", "threshold", "windows", "windows_above_threshold", "after_nms",
                "highlights")
# What `select` takes from highlights.json: the source its clips are cut from, as a progress
# record's (engine.records.SOURCE_INFO), and the settings it starts from (each value is then
# checked as a config value).
_WINDOW_LENGTH = {"type": "number", "exclusiveMinimum": 0}
SUMMARY_SCHEMA = {"allOf": [records.SOURCE_INFO, {
    "required": ["settings"],
    "properties": {"settings": {"type": "object", "properties": {
        "window_sec": _WINDOW_LENGTH, "stride_sec": _WINDOW_LENGTH}}}}]}


@dataclass
class Outcome:
    """What a selection chose and wrote."""

    selection: Selection
    highlights: List[dict]  # the clips table's rows, in the order asked for (cfg.order)
    summary: List[str]  # for a person: the counts, and what would give more highlights


def is_flat(windows: Sequence[WindowScore]) -> bool:
    """Many windows that all score the same: nothing stands out."""
    return len(windows) > 1 and len({w.confidence for w in windows}) == 1


def choose(windows: Sequence[WindowScore], cfg: Config) -> Selection:
    """The seed's selection: a percentile (or an absolute threshold), NMS, the top N. A lone
    window is chosen when it passes, as the notebook chooses it (its percentile is its own
    score); when many windows all score the same, none is."""
    if cfg.threshold is not None:
        selection = select_above(windows, cfg.threshold, cfg.nms_window, cfg.top_n)
    else:
        selection = select_highlights(windows, cfg.threshold_percentile, cfg.nms_window,
                                      cfg.top_n)
    if is_flat(windows):
        return Selection(selection.threshold, [], [], [])
    return selection


def threshold_words(cfg: Config, selection: Selection) -> str:
    if cfg.threshold is not None:
        return f"the threshold {selection.threshold:.4f}"
    return f"the {cfg.threshold_percentile:g}th percentile ({selection.threshold:.4f})"


def summary(windows: Sequence[WindowScore], selection: Selection, cfg: Config) -> List[str]:
    """The counts a person reads, in agreement with what was chosen; when fewer than --top-n
    came through, what gives more, or that this input cannot give more."""
    n = len(windows)
    if is_flat(windows):
        return [f"{plural(n, 'window')}, all scoring {windows[0].confidence:.4f}: nothing "
                f"stands out, no clips chosen"]
    lines = [f"{plural(n, 'window')}, {len(selection.above)} at or above "
             f"{threshold_words(cfg, selection)}, {len(selection.kept)} after NMS, "
             f"top {len(selection.top)}:"]
    if len(selection.top) < cfg.top_n:
        lines += _how_to_get_more(windows, selection, cfg)
    return lines


def _how_to_get_more(windows: Sequence[WindowScore], selection: Selection,
                     cfg: Config) -> List[str]:
    got = len(selection.top)
    # The most any threshold gives: every window a candidate, NMS keeps the separate ones.
    most = len(apply_nms(windows, cfg.nms_window))
    lines = []
    if most < cfg.top_n:
        span = windows[-1].end_sec - windows[0].start_sec
        lines.append(f"note: this {hms(span)} input holds at most "
                     f"{plural(most, 'separate window')} at --nms-window {cfg.nms_window:g}, "
                     f"so --top-n {cfg.top_n} cannot be reached (a smaller --nms-window allows "
                     f"more)")
    want = min(cfg.top_n, most)
    if got >= want:
        return lines
    if cfg.threshold is not None:
        score = _threshold_for(windows, cfg, want)
        lines.append(f"note: {plural(got, 'highlight')} at or above the threshold "
                     f"{cfg.threshold:g}, fewer than --top-n {cfg.top_n}: --threshold "
                     f"{score:.4f} gives {want}")
    else:
        percentile = _percentile_for(windows, cfg, want)
        lines.append(f"note: {plural(got, 'highlight')} at or above the "
                     f"{cfg.threshold_percentile:g}th percentile, fewer than --top-n "
                     f"{cfg.top_n}: --threshold-percentile {percentile:g} gives {want}")
    return lines


def _highest(values: Sequence[float], gives_enough) -> float:
    """The first of `values` (from the strictest down) for which gives_enough holds, found by
    bisection: the count after NMS grows with a lower threshold, if not strictly (a new window
    can displace two), so the answer found is checked and the search goes lower until it
    holds; the last value (every window a candidate) always does."""
    lo, hi = 0, len(values) - 1  # gives_enough(values[hi]) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if gives_enough(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    while not gives_enough(values[lo]):  # where the count dipped: lower until it holds
        lo += 1
    return values[lo]


def _percentile_for(windows, cfg: Config, want: int) -> float:
    """The highest whole percentile below the asked one that gives `want` highlights."""
    candidates = [float(p) for p in range(math.ceil(cfg.threshold_percentile) - 1, -1, -1)]
    return _highest(candidates or [0.0], lambda p: len(
        select_highlights(windows, p, cfg.nms_window, cfg.top_n).top) >= want)


def _threshold_for(windows, cfg: Config, want: int) -> float:
    """The highest score that, as --threshold, gives `want` highlights (rounded down to four
    decimals, so that the printed value keeps that window in)."""
    scores = sorted({w.confidence for w in windows}, reverse=True)
    score = _highest(scores, lambda t: len(
        select_above(windows, t, cfg.nms_window, cfg.top_n).top) >= want)
    return math.floor(score * 1e4) / 1e4


def finish(out_dir: Path, windows: List[WindowScore], cfg: Config, info: dict,
           recut: bool = False) -> Outcome:
    """Selection, clips, plot and the summary: what `detect` ends with and `select` re-runs.
    recut: the clips are cut again after an interruption (said so)."""
    selection = choose(windows, cfg)
    if is_flat(windows):
        log.warning("all %d windows score the same (%.4f): nothing stands out, no clips chosen",
                    len(windows), windows[0].confidence)
    clips = None
    if cfg.clips and selection.top:
        log.info("the clips are cut from %s", info["source"])
        if recut:
            log.info("cutting the %s again: the interrupted run had not finished them",
                     plural(len(selection.top), "clip"))
        clips = cut_clips(out_dir, selection, cfg, info)
    remove_stale_clips(out_dir / "clips", {c.path.name for c in clips or ()})
    spans = [(c.start_sec, c.end_sec) for c in clips] if clips else None
    plot.plot_scores(out_dir, windows, selection, title=Path(info["source"]).name, spans=spans,
                     threshold_label="absolute" if cfg.threshold is not None
                     else f"{cfg.threshold_percentile:g}th percentile")
    rows = tables.highlight_rows(selection, clips)
    if cfg.order == "time":
        rows.sort(key=lambda r: r["start_sec"])
    tables.write_clips_csv(out_dir, rows)
    record = dict(info)
    record.update({
        "settings": cfg.selection_settings(),
        "threshold": selection.threshold,
        "windows": len(windows),
        "windows_above_threshold": len(selection.above),
        "after_nms": len(selection.kept),
        "highlights": rows,
    })
    tables.write_summary(out_dir, record)
    from highlightsense.operators.sinks.timelines import refresh_exports

    refresh_exports(out_dir)  # an earlier export in the folder follows the new selection
    return Outcome(selection, rows, summary(windows, selection, cfg))


def cut_clips(out_dir: Path, selection: Selection, cfg: Config, info: dict):
    from highlightsense.operators.sources.resolve import is_url

    clips_dir = own_folder(out_dir / "clips")
    spans = [(w.start_sec, w.end_sec) for w in selection.top]

    def before(k: int, n: int) -> None:
        start, end = spans[k - 1]
        log.info("cutting clip %d of %d (%s to %s)", k, n, hms(start), hms(end))

    if is_url(info["source"]):  # only each clip's range travels: see operators.sinks.remote_clips
        from highlightsense.operators.sinks.remote_clips import cut_url_clips
        from highlightsense.operators.sources.fetch import FetchPolicy

        return cut_url_clips(info["source"], clips_dir, spans, origin_sec=info["origin_sec"],
                             timeline=info.get("timeline"), exact=cfg.exact_cuts,
                             stream_index=info.get("audio_stream"), parallel=cfg.hls_fragments,
                             before=before,
                             policy=FetchPolicy(allow_private_hosts=cfg.allow_private_hosts))
    from highlightsense.operators.sinks.clips import cut_clips as cut

    return cut(info["source"], clips_dir, spans, origin_sec=info["origin_sec"],
               exact=cfg.exact_cuts, stream_index=info.get("audio_stream"), before=before)


def remove_stale_clips(clips_dir: Path, keep: set) -> None:
    """Clips an earlier run wrote that this selection no longer names would look like part of
    it: remove them. Only files named as this tool names clips (never a link, a folder or a
    file of the user's); the folder goes too when that leaves it empty."""
    from highlightsense.operators.sinks.clips import CLIP_NAME

    if clips_dir.is_symlink() or not clips_dir.is_dir():
        return
    for old in clips_dir.iterdir():
        if (old.name not in keep and CLIP_NAME.fullmatch(old.name) and not old.is_symlink()
                and old.is_file()):
            old.unlink()
    if not any(clips_dir.iterdir()):
        clips_dir.rmdir()


def finished_summary(out_dir: Path) -> Dict:
    """The folder's highlights.json; refuses a folder that holds no finished run."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise HighlightSenseError(f"no such folder: {out_dir}; give the --out folder of a "
                                  f"finished detect run")
    if not out_dir.is_dir():
        raise HighlightSenseError(f"{out_dir} is a file; give the --out folder of a finished "
                                  f"detect run")
    if not (out_dir / tables.SCORES_CSV).exists() or not (out_dir / tables.SUMMARY_JSON).exists():
        raise HighlightSenseError(
            f"{out_dir} holds no finished detect run (no {tables.SCORES_CSV} and "
            f"{tables.SUMMARY_JSON}); run `highlightsense detect INPUT --out {out_dir}` first")
    path = out_dir / tables.SUMMARY_JSON
    again = f"run detect again into {out_dir} (or another --out)"
    try:  # NaN and infinities as json.dump writes them: the schema refuses them where used
        summary = records.read_json(path, constants=("NaN", "Infinity", "-Infinity"))
    except (OSError, ValueError) as e:
        raise records.RecordError(f"{path} is unreadable ({getattr(e, 'strerror', None) or e}); "
                                  f"{again}") from None
    return records.check(summary, SUMMARY_SCHEMA, str(path), again)


def _saved_scores(out_dir: Path) -> List[WindowScore]:
    """The folder's window scores, each a number where select uses one."""
    path = out_dir / tables.SCORES_CSV
    try:
        windows = tables.read_scores(out_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise records.RecordError(f"{path} is unreadable ({e}); run detect again into "
                                  f"{out_dir}") from None
    for w in windows:
        if not all(map(math.isfinite, (w.start_sec, w.end_sec, w.confidence))):
            raise records.RecordError(f"{path}: window {w.index} has a score or time that is "
                                      f"not a finite number; run detect again into {out_dir}")
    return windows


def last_settings(out_dir: Path) -> Dict:
    """The selection settings the folder's last run chose with (its highlights.json), which
    `select` starts from; refuses a folder that holds no finished run."""
    saved = finished_summary(out_dir).get("settings", {})
    return {k: saved[k] for k in SELECTION_KEYS if k in saved}


def select_config(out_dir: Path, config_path: Optional[str], overrides: Dict):
    """The settings `select` (and the review page) chooses with: the flags given, then the
    folder's last selection for what they leave unset, then the defaults. Returns the Config and
    the settings taken from the folder."""
    given = given_keys(config_path, overrides)
    if "threshold_percentile" in given:
        given.add("threshold")  # a percentile given clears the folder's absolute threshold
    taken = {k: v for k, v in last_settings(out_dir).items() if k not in given}
    return load_config(config_path, overrides, beneath=taken), taken


def reselect(out_dir: Path, cfg: Config) -> Outcome:
    """`select`: selection and clips again from saved scores, without touching the audio."""
    out_dir = Path(out_dir)
    saved = finished_summary(out_dir)
    windows = _saved_scores(out_dir)
    info = {k: v for k, v in saved.items() if k not in _RESULT_KEYS}
    # The scores fix the windows: keep the window settings they were computed with.
    settings = saved.get("settings", {})
    cfg = replace(cfg, **{k: settings[k] for k in ("window_sec", "stride_sec") if k in settings})
    from highlightsense.operators.sources.resolve import is_url

    if cfg.clips and not is_url(info["source"]) and not os.path.exists(info["source"]):
        raise HighlightSenseError(
            f"the source {info['source']} is gone; clips need it (or pass --no-clips)")
    if cfg.clips:
        check_own_folder(out_dir / "clips")  # before anything of the folder's is replaced
    (out_dir / tables.SUMMARY_JSON).unlink()
    try:
        return finish(out_dir, windows, cfg, info)
    except OSError as e:
        raise HighlightSenseError(
            f"cannot write the outputs in {out_dir}: {e.strerror or e}; free space or fix the "
            f"folder, then run detect again (this select had begun replacing the outputs)"
        ) from None


def settings_words(settings: Dict, flags: Dict[str, str]) -> Optional[str]:
    """Settings as the flags that give them ("--top-n 10, --no-clips"), for a person."""
    words = []
    for key, value in settings.items():
        if key == "clips":
            words.append("--clips" if value else "--no-clips")
        elif key == "exact_cuts":
            words.append("--exact-cuts" if value else "--copy-cuts")
        elif key in flags:
            words.append(f"{flags[key]} {value:g}" if isinstance(value, float)
                         else f"{flags[key]} {value}")
    return ", ".join(words) or None
