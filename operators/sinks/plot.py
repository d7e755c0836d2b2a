"""scores.png: confidence over time, the threshold line, the chosen clips marked."""
from pathlib import Path
from typing import Sequence

from highlightsense.engine.files import atomic_path
from highlightsense.operators.select import Selection, WindowScore

PLOT_PNG = "scores.png"


def plot_scores(out_dir: Path, windows: Sequence[WindowScore], selection: Selection,
                title: str = "") -> Path:
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
        ax.axhline(selection.threshold, color="red", linestyle="--", label="threshold")
    for rank, w in enumerate(selection.top, start=1):
        ax.axvspan(w.start_sec / 60, w.end_sec / 60, color="orange", alpha=0.3,
                   label="chosen clips" if rank == 1 else None)
        ax.annotate(str(rank), (w.start_sec / 60, w.confidence), fontsize=8)
    ax.set_xlabel("time (min)")
    ax.set_ylabel("confidence")
    ax.set_title(title)
    ax.legend(loc="best")
    path = Path(out_dir) / PLOT_PNG
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path
