"""Review decisions: DIR/review.json, keep or drop per highlight, written by the review page and
read by `export` (and the review page itself).

    {"decisions": {"<rank>": {"keep": true, "note": "..."}, ...}}

(the page may add more keys: the window's start_sec and end_sec, "unmatched" decisions.)

Ranks are those of the folder's last selection (highlights.json). A highlight with no decision
counts as kept: the review drops the weak ones and keeps the rest.
"""
import json
from pathlib import Path
from typing import Dict, Iterable, Optional, Set

from highlightsense.engine.errors import HighlightSenseError

REVIEW_JSON = "review.json"


def read_decisions(out_dir) -> Optional[Dict[int, dict]]:
    """{rank: {"keep": bool, "note": str}}, or None when the folder holds no review.json."""
    path = Path(out_dir) / REVIEW_JSON
    if not path.exists():
        return None
    try:
        with open(path) as f:
            raw = json.load(f).get("decisions", {})
        # No "keep" (or null): undecided, which counts as kept. Other keys (the window's
        # start_sec / end_sec the review page adds) are the page's.
        return {int(rank): {"keep": d.get("keep") is None or bool(d["keep"]),
                            "note": str(d.get("note") or "")}
                for rank, d in raw.items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise HighlightSenseError(f"{path} is not a review file ({e}); fix or remove it, or "
                                  f"pass --all") from None


def kept_ranks(out_dir, ranks: Optional[Iterable[int]] = None) -> Optional[Set[int]]:
    """The ranks the review keeps among `ranks` (by default those of the folder's
    highlights.json): all but the dropped ones. None when there is no review.json."""
    decisions = read_decisions(out_dir)
    if decisions is None:
        return None
    if ranks is None:
        from highlightsense.operators.sinks.tables import read_summary

        ranks = [row["rank"] for row in read_summary(out_dir).get("highlights", [])]
    return {r for r in ranks if decisions.get(r, {"keep": True})["keep"]}
