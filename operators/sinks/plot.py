"""scores.png: confidence over time, the threshold line (its value in the legend), the chosen
clips marked by what each clip file spans (a stream-copy clip starts at the keyframe before its
window), the legend beside the plot, off the data."""
from pathlib import Path
from typing import Optional, Sequence, Tuple

from highlightsense.engine.files import atomic_file
from highlightsense.operators.select import Selection, WindowScore

PLOT_PNG = "scores.png"


def plot_scores(out_dir: Path, windows: Sequence[WindowScore], selection: Selection,
                title: str = "", spans: Optional[Sequence[Tuple[float, float]]] = None,
                threshold_label: str = "") -> Path:
    """Writes scores_figure(...) as out_dir/scores.png, atomically."""
    fig = scores_figure(windows, selection, title, spans, threshold_label)
    path = Path(out_dir) / PLOT_PNG
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    return path


def scores_figure(windows: Sequence[WindowScore], selection: Selection, title: str = "",
                  spans: Optional[Sequence[Tuple[float, float]]] = None,
                  threshold_label: str = ""):
    """The plot as a matplotlib Figure. spans: (start, end) stream seconds of each clip as
    written, in rank order; without them (no clips cut) the chosen windows are marked.
    threshold_label: what the threshold is ("99th percentile")."""
    # A figure of its own on its own Agg canvas: no pyplot, so the caller's backend (a
    # notebook's inline one, a GUI's) is left as it was, and no display is needed on servers.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([w.start_sec / 60 for w in windows], [w.confidence for w in windows],
            label="confidence", linewidth=1)
    if windows:
        ax.axhline(selection.threshold, color="red", linestyle="--",
                   label=f"threshold {selection.threshold:.4f}"
                         + (f" ({threshold_label})" if threshold_label else ""))
    marked = spans or [(w.start_sec, w.end_sec) for w in selection.top]
    for rank, (w, (start, end)) in enumerate(zip(selection.top, marked), start=1):
        ax.axvspan(start / 60, end / 60, color="orange", alpha=0.3,
                   label=("clip files" if spans else "chosen windows") if rank == 1 else None)
        ax.annotate(str(rank), (w.start_sec / 60, w.confidence), fontsize=8)
    ax.set_xlabel("time (min)")
    ax.set_ylabel("confidence")
    ax.set_title(title)
    if windows:  # beside the axes: it never hides a score
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig
