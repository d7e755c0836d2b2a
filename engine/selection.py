"""Choosing the highlights from the window scores, and the outputs that follow: what `detect`
ends with, and the whole of `select` (choose again from a finished run's saved scores, new
threshold, top N or NMS window, without touching the audio)."""
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import List

from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.select import Selection, WindowScore, select_highlights
from highlightsense.operators.sinks import plot, tables

log = logging.getLogger("highlightsense")


def finish(out_dir: Path, windows: List[WindowScore], cfg: Config, info: dict):
    """Selection, plot, clips and the summary: what `detect` ends with and `select` re-runs."""
    if cfg.threshold is not None:
        from highlightsense.operators.online_select import select_above

        selection = select_above(windows, cfg.threshold, cfg.nms_window, cfg.top_n)
    else:
        selection = select_highlights(windows, cfg.threshold_percentile, cfg.nms_window, cfg.top_n)
    confidences = {w.confidence for w in windows}
    if len(confidences) == 1:
        log.warning("all %d windows score the same (%.4f): nothing stands out, no clips chosen",
                    len(windows), windows[0].confidence)
        selection = Selection(selection.threshold, [], [], [])
    plot.plot_scores(out_dir, windows, selection, title=Path(info["source"]).name)
    clips = cut_clips(out_dir, selection, cfg, info) if cfg.clips and selection.top else None
    rows = tables.highlight_rows(selection, clips)
    tables.write_clips_csv(out_dir, rows)
    summary = dict(info)
    summary.update({
        "settings": cfg.selection_settings(),
        "threshold": selection.threshold,
        "windows": len(windows),
        "windows_above_threshold": len(selection.above),
        "after_nms": len(selection.kept),
        "highlights": rows,
    })
    tables.write_summary(out_dir, summary)
    return selection, rows


def cut_clips(out_dir: Path, selection: Selection, cfg: Config, info: dict):
    from highlightsense.operators.sinks.clips import cut_clips as cut

    from highlightsense.operators.sources.resolve import is_url

    clips_dir = out_dir / "clips"
    clips_dir.mkdir(exist_ok=True)
    if is_url(info["source"]):  # only each clip's range travels: see operators.sinks.remote_clips
        from highlightsense.operators.sinks.remote_clips import cut_url_clips as cut
        results = cut(info["source"], clips_dir, [(w.start_sec, w.end_sec) for w in selection.top],
                      origin_sec=info["origin_sec"], timeline=info.get("timeline"),
                      exact=cfg.exact_cuts, stream_index=info.get("audio_stream"),
                      parallel=cfg.hls_fragments)
    else:
        results = cut(info["source"], clips_dir, [(w.start_sec, w.end_sec) for w in selection.top],
                      origin_sec=info["origin_sec"], exact=cfg.exact_cuts,
                      stream_index=info.get("audio_stream"))
    # Clips an earlier run left beyond this run's count would look like part of this run.
    keep = {r.path.name for r in results}
    for old in clips_dir.glob("highlight_*"):
        if old.name not in keep and old.is_file():
            old.unlink()
    return results


def reselect(out_dir: Path, cfg: Config) -> tuple:
    """`select`: selection and clips again from saved scores, without touching the audio."""
    out_dir = Path(out_dir)
    if not (out_dir / tables.SCORES_CSV).exists() or not (out_dir / tables.SUMMARY_JSON).exists():
        raise HighlightSenseError(
            f"{out_dir} holds no finished detect run (no {tables.SCORES_CSV} and "
            f"{tables.SUMMARY_JSON}); run `highlightsense detect INPUT --out {out_dir}` first")
    windows = tables.read_scores(out_dir)
    summary = tables.read_summary(out_dir)
    info = {k: v for k, v in summary.items()
            if k not in ("settings", "threshold", "windows", "windows_above_threshold",
                         "after_nms", "highlights")}
    # The scores fix the windows: keep the window settings they were computed with.
    saved = summary.get("settings", {})
    cfg = replace(cfg, **{k: saved[k] for k in ("window_sec", "stride_sec") if k in saved})
    from highlightsense.operators.sources.resolve import is_url

    if cfg.clips and not is_url(info["source"]) and not os.path.exists(info["source"]):
        raise HighlightSenseError(
            f"the source {info['source']} is gone; clips need it (or pass --no-clips)")
    (out_dir / tables.SUMMARY_JSON).unlink()
    try:
        return finish(out_dir, windows, cfg, info)
    except OSError as e:
        raise HighlightSenseError(
            f"cannot write the outputs in {out_dir}: {e.strerror or e}; free space or fix the "
            f"folder, then run detect again (this select had begun replacing the outputs)"
        ) from None
