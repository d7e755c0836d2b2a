"""The GPU suite's tables, from the JSON files benchmarks/gpu_suite.sh leaves in its results
folder, against the GPU issue's targets.

    python -m highlightsense.benchmarks.gpu_report RESULTS_DIR

Reads, where present: sep_b<B>_<fp32|half>.json (bench --stage separate), crnn.json
(crnn_throughput --json-out), fid_fp32.json and fid_half.json (the same input and random models,
fp32 and --half separation) and e2e.json (bench --input, the long file). Prints one table each
and writes them to RESULTS_DIR/report.txt.
"""
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

TARGETS = {"separation_x": 1000.0, "crnn_windows_per_sec": 2000.0, "e2e_x": 300.0,
           "first_score_sec": 5.0}


def _load(path: Path) -> Optional[dict]:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data.get("engine", data)  # bench writes {"engine": {...}}


def _mark(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def separation_table(folder: Path) -> List[str]:
    rows = []
    for path in sorted(folder.glob("sep_b*_*.json")):
        m = re.fullmatch(r"sep_b(\d+)_(fp32|half)\.json", path.name)
        if m is None:
            continue
        r = _load(path)
        rows.append((int(m[1]), m[2], r["x_realtime"], r.get("gpu_peak_memory_mb")))
        size = r.get("random", {}).get("separator", "given")
    if not rows:
        return []
    rows.sort()
    best = max(rows, key=lambda r: r[2])
    lines = [f"separation alone ({size}-size HTDemucs, random weights):",
             "  batch  precision  x realtime  peak GPU MB"]
    lines += [f"  {b:5d}  {prec:9s}  {x:10.1f}  {_num(mem, '.0f'):>11s}"
              for b, prec, x, mem in rows]
    lines.append(f"  best: batch {best[0]} {best[1]}, {best[2]:.1f}x realtime: "
                 f"{_mark(best[2] >= TARGETS['separation_x'])} the target "
                 f"{TARGETS['separation_x']:.0f}x")
    return lines


def crnn_table(folder: Path) -> List[str]:
    r = _load(folder / "crnn.json")
    if r is None:
        return []
    rates = {int(k): v for k, v in r["windows_per_sec"].items()}
    lines = [f"CRNN alone ({r.get('size', 'full')}-size, random weights, {r['device']}):",
             "  batch  windows/s"]
    lines += [f"  {b:5d}  {rates[b]:9.1f}" for b in sorted(rates)]
    best = max(rates, key=rates.get)
    lines.append(f"  best: batch {best}, {rates[best]:.0f} windows/s: "
                 f"{_mark(rates[best] >= TARGETS['crnn_windows_per_sec'])} the target "
                 f"{TARGETS['crnn_windows_per_sec']:.0f}")
    return lines


def fidelity(fp32: dict, half: dict) -> Dict[str, object]:
    """--half against fp32 on the same input and models: the largest change of a window's score
    and whether the selection (the top windows, in rank order) is the same."""
    a, b = np.asarray(fp32["confidences"]), np.asarray(half["confidences"])
    if a.shape != b.shape:
        raise ValueError(f"the runs scored {a.size} and {b.size} windows: not the same input")
    return {"windows": int(a.size), "max_abs_dp": float(np.max(np.abs(a - b))) if a.size else 0.0,
            "same_selection": fp32["top"] == half["top"], "top_fp32": fp32["top"],
            "top_half": half["top"]}


def fidelity_table(folder: Path) -> List[str]:
    fp32, half = _load(folder / "fid_fp32.json"), _load(folder / "fid_half.json")
    if fp32 is None or half is None:
        return []
    f = fidelity(fp32, half)
    lines = [f"fidelity, --half against fp32 ({f['windows']} windows, "
             f"{fp32['audio_sec'] / 60:.0f} minutes):",
             f"  max |dp| {f['max_abs_dp']:.2e}; selection "
             f"{'the same' if f['same_selection'] else 'differs'}"]
    if not f["same_selection"]:
        lines.append(f"  top fp32 {f['top_fp32']}\n  top half {f['top_half']}")
    return lines


def e2e_table(folder: Path) -> List[str]:
    r = _load(folder / "e2e.json")
    if r is None:
        return []
    first = r.get("first_window_sec")
    return [f"end to end ({r['audio_sec'] / 3600:.2f} h local file, separator batch "
            f"{r.get('separator_batch')}, half {r.get('half')}):",
            f"  wall {r['wall_sec']:.1f} s, {r['x_realtime']:.1f}x realtime: "
            f"{_mark(r['x_realtime'] >= TARGETS['e2e_x'])} the target {TARGETS['e2e_x']:.0f}x",
            f"  first score {_num(first, '.2f')} s: "
            f"{_mark(first is not None and first < TARGETS['first_score_sec'])} the target "
            f"{TARGETS['first_score_sec']:.0f} s",
            f"  peak GPU memory {_num(r.get('gpu_peak_memory_mb'), '.0f')} MB, wall / model "
            f"compute {_num(r.get('wall_over_model'), '.2f')}"]


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(folder: Path) -> str:
    parts = [t for t in (separation_table(folder), crnn_table(folder), fidelity_table(folder),
                         e2e_table(folder)) if t]
    return "\n\n".join("\n".join(t) for t in parts) + "\n" if parts else ""


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m highlightsense.benchmarks.gpu_report RESULTS_DIR", file=sys.stderr)
        return 2
    folder = Path(args[0])
    text = report(folder)
    if not text:
        print(f"gpu_report: no results in {folder}", file=sys.stderr)
        return 1
    (folder / "report.txt").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
