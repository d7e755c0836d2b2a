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


def read_review(out_dir) -> dict:
    """DIR/review.json as the page wrote it ({"decisions": {}} when there is none)."""
    path = Path(out_dir) / REVIEW_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"decisions": {}}
    except (OSError, ValueError) as e:
        raise HighlightSenseError(f"cannot read {path} ({e}); fix or remove it, or pass "
                                  f"--all") from None
    if not isinstance(data, dict) or not isinstance(data.setdefault("decisions", {}), dict):
        raise HighlightSenseError(f"{path} is not a review file; fix or remove it, or pass --all")
    return data


def read_decisions(out_dir) -> Optional[Dict[int, dict]]:
    """{rank: {"keep": bool, "note": str}}, or None when the folder holds no review.json."""
    if not (Path(out_dir) / REVIEW_JSON).exists():
        return None
    raw = read_review(out_dir)["decisions"]
    try:
        # No "keep" (or null): undecided, which counts as kept. Other keys (the window's
        # start_sec / end_sec the review page adds) are the page's.
        return {int(rank): {"keep": d.get("keep") is None or bool(d["keep"]),
                            "note": str(d.get("note") or "")}
                for rank, d in raw.items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise HighlightSenseError(f"{Path(out_dir) / REVIEW_JSON} is not a review file ({e}); "
                                  f"fix or remove it, or pass --all") from None


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
