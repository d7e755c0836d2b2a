"""`evaluate`: how good finished runs are against labelled highlights.

Metrics (pure functions, each tested against a hand-computed example):
- precision@K / recall@K of the selected highlights (rank order): a highlight is a hit when its
  window contains a positive label's centre; each label is matched at most once. P@K divides by
  K, so a run that selected fewer than K counts the missing ones as misses; R@K divides by the
  positive labels.
- HIT@1: whether the first highlight is a hit.
- average precision over all window scores, each window labelled by labels.window_label (the
  windows it leaves out count for neither side): sum over the score thresholds, best first, of
  (recall gained) x (precision there), ties taken together as one threshold.
Overall figures of several runs of one scorer: hits over K x runs, hits over all positives, AP
over the pooled windows, the mean HIT@1.
"""
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.labels import Label, check_within, match_sources, window_label

log = logging.getLogger("highlightsense")

KS = (1, 5, 10)  # and each run's top-n


# ---- metrics ---------------------------------------------------------------------------------

def match_hits(highlights: Sequence[Tuple[float, float]], positive_centres: Sequence[float]
               ) -> List[bool]:
    """Per highlight (start, end), best first: whether it is a hit. Each takes the unmatched
    centre nearest its own middle within [start, end); a label is matched at most once."""
    free = sorted(positive_centres)
    hits = []
    for start, end in highlights:
        inside = [c for c in free if start <= c < end]
        if inside:
            mid = (start + end) / 2
            free.remove(min(inside, key=lambda c: abs(c - mid)))
        hits.append(bool(inside))
    return hits


def precision_at(hits: Sequence[bool], k: int) -> float:
    """Hits among the first k highlights over k (missing highlights are misses)."""
    return sum(hits[:k]) / k


def recall_at(hits: Sequence[bool], k: int, positives: int) -> Optional[float]:
    """Labels found by the first k highlights over the positive labels (None without any)."""
    return sum(hits[:k]) / positives if positives else None


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> Optional[float]:
    """AP of scores against 0/1 labels: sum over distinct thresholds (best first) of the recall
    gained times the precision at that threshold; tied scores enter together. None without a
    positive."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    if labels.sum() == 0:
        return None
    precision, recall = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at each distinct score threshold, best first."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # where each threshold ends
    tp = np.cumsum(y)[last_of_tie]
    taken = last_of_tie + 1
    return tp / taken, tp / max(1, labels.sum())


# ---- runs ------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """One run folder measured against the labels of its source."""

    run: str
    system: str  # which scorer: "loudness", "crnn best_model.pt"
    source: str
    top_n: int
    positives: int  # positive labels
    hits: List[bool]  # per selected highlight, rank order
    window_scores: List[float] = field(repr=False, default_factory=list)
    window_labels: List[int] = field(repr=False, default_factory=list)  # 0/1, left-out dropped

    @property
    def ks(self) -> List[int]:
        return sorted({*KS, self.top_n})

    def figures(self) -> Dict:
        return figures([self])


def figures(runs: Sequence[RunResult]) -> Dict:
    """P@K, R@K, AP and HIT@1 of one run, or of several of one scorer together."""
    ks = sorted({k for r in runs for k in r.ks})
    positives = sum(r.positives for r in runs)
    out = {"runs": len(runs), "positives": positives,
           "windows": sum(len(r.window_labels) for r in runs),
           "ap": average_precision([s for r in runs for s in r.window_scores],
                                   [y for r in runs for y in r.window_labels]),
           "hit@1": float(np.mean([bool(r.hits[:1] and r.hits[0]) for r in runs]))}
    for k in ks:
        found = sum(sum(r.hits[:k]) for r in runs)
        out[f"p@{k}"] = found / (k * len(runs))
        out[f"r@{k}"] = found / positives if positives else None
    return out


def system_name(summary: Dict) -> str:
    model = summary.get("model")
    return summary.get("scorer", "?") + (f" {model}" if model else "")


def evaluate_run(run_dir: Path, summary: Dict, labels: Sequence[Label], windows,
                 negatives: str) -> RunResult:
    """One finished run (its highlights.json `summary` and window scores) against its labels."""
    check_within(labels, summary["source"], summary.get("duration_sec"))
    highlights = sorted(summary.get("highlights", []), key=lambda h: h["rank"])
    positives = [lab for lab in labels if lab.label == 1]
    hits = match_hits([(h["start_sec"], h["end_sec"]) for h in highlights],
                      [lab.centre for lab in positives])
    scores, ys = [], []
    for w in windows:
        y = window_label(w.start_sec, w.end_sec, labels, negatives)
        if y is not None:
            scores.append(w.confidence)
            ys.append(y)
    top_n = int(summary.get("settings", {}).get("top_n", len(highlights)) or 1)
    return RunResult(str(run_dir), system_name(summary), summary["source"], top_n,
                     len(positives), hits, scores, ys)


def evaluate(run_dirs: Sequence[str], labels: Sequence[Label], negatives: str = "all"
             ) -> List[RunResult]:
    from highlightsense.engine.selection import finished_summary
    from highlightsense.operators.sinks import tables

    runs = [(Path(d), finished_summary(d)) for d in run_dirs]
    grouped = match_sources(labels, sorted({s["source"] for _, s in runs}))
    return [evaluate_run(d, s, grouped[s["source"]], tables.read_scores(d), negatives)
            for d, s in runs]


def by_system(results: Sequence[RunResult]) -> Dict[str, List[RunResult]]:
    systems: Dict[str, List[RunResult]] = {}
    for r in results:
        systems.setdefault(r.system, []).append(r)
    return systems


def report(results: Sequence[RunResult]) -> Dict:
    """Per run and per scorer (overall), as --json prints it."""
    return {"runs": [{"run": r.run, "system": r.system, "source": r.source, **r.figures()}
                     for r in results],
            "overall": {name: figures(rs) for name, rs in by_system(results).items()}}


def table(results: Sequence[RunResult]) -> str:
    """One table: a row per run, then an overall row per scorer."""
    ks = sorted({k for r in results for k in r.ks})
    cols = ["ap", "hit@1"] + [f"p@{k}" for k in ks] + [f"r@{k}" for k in ks]

    def cell(v):
        return "-" if v is None else f"{v:.3f}"

    rows = [(Path(r.run).name, r.system, r.figures()) for r in results]
    rows += [("overall", name, figures(rs)) for name, rs in by_system(results).items()]
    w0 = max(len("run"), *(len(a) for a, _, _ in rows))
    w1 = max(len("scorer"), *(len(b) for _, b, _ in rows))
    lines = [f"{'run':<{w0}}  {'scorer':<{w1}}  {'pos':>4}  " + "  ".join(f"{c:>6}" for c in cols)]
    for a, b, f in rows:
        lines.append(f"{a:<{w0}}  {b:<{w1}}  {f['positives']:>4}  "
                     + "  ".join(f"{cell(f.get(c)):>6}" for c in cols))
    return "\n".join(lines)


def plot_pr(results: Sequence[RunResult], path: Path) -> Optional[Path]:
    """The precision-recall curve of each scorer (its runs' windows pooled), as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from highlightsense.engine.files import atomic_file

    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    drawn = 0
    for name, rs in by_system(results).items():
        scores = np.array([s for r in rs for s in r.window_scores])
        ys = np.array([y for r in rs for y in r.window_labels])
        if ys.sum() == 0:
            continue
        precision, recall = pr_curve(scores, ys)
        ap = average_precision(scores, ys)
        ax.step(np.r_[0, recall], np.r_[precision[0], precision], where="pre",
                label=f"{name} (AP {ap:.3f})")
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("recall (windows)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    return path


def run_command(run_dirs: Sequence[str], labels: Sequence[Label], negatives: str,
                as_json: bool, plot: Optional[str]) -> int:
    results = evaluate(run_dirs, labels, negatives)
    if not any(r.positives for r in results):
        raise HighlightSenseError("no positive label falls on these runs' sources; nothing to "
                                  "measure (check the source column of the labels)")
    drawn = plot_pr(results, Path(plot)) if plot else None
    if as_json:
        print(json.dumps(report(results), indent=2))
    else:
        print(table(results))
    if drawn:
        log.info("precision-recall curves in %s", drawn)
    return 0
