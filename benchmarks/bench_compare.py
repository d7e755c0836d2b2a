"""The engine against the seed's way (the notebook's), and the engine's memory over VOD length:
the parts of `highlightsense bench --compare-notebook` and `--rss-minutes` (benchmarks/bench.py
runs them).

    highlightsense bench --compare-notebook --minutes 10 --random-model full --random-separator full
    highlightsense bench --rss-minutes 10 60 [--rss-separator small]

One run: the input and the model files are made once, then the engine's job and the seed's job
(benchmarks.seed_way) each run in a fresh process on them. Printed: the ratios of end-to-end
wall (seed / engine), peak RSS (seed's process tree / engine), bytes written to disk by each
process tree less final outputs, time to the first scored window (engine / seed); how far the
two ways' scores agree; and the issue's targets, each met or not:

- end to end at least 1.3x faster than the seed's way;
- the engine's wall at most 10% above its models' compute (summed Demucs and CRNN forward time);
- zero bytes of audio or feature intermediates: the file data the engine's process wrote
  (write() calls, any filesystem) beyond its outputs and its progress record under 1 MB
  (ten seconds of 16-bit stereo audio are 1.7 MB); write_bytes, which adds the filesystem
  metadata the job dirtied, is shown beside it;
- peak RSS flat in VOD length: the longest --rss-minutes input's peak within 10% of the
  shortest's;
- time to the first scored window under 1/4 of the seed's.

The targets are stated for a 10-minute input, full-size Demucs shape, on the CPU (and a small
Demucs for the memory one); other conditions are measured the same way and flagged.
"""
import copy
from pathlib import Path
from typing import List

import numpy as np

from highlightsense.benchmarks import bench_support as support


def run_seed(args, input_info: dict, models: dict, tmp: Path) -> dict:
    """The seed's way on the engine's input and model files, in a fresh process."""
    from highlightsense.benchmarks.bench import _job_command, _job_env

    spec = {"input": input_info["path"], "model": models["model"],
            "separator": models["separator"], "device": args.device,
            "shifts": args.seed_shifts, "threads": args.threads, "quiet": args.quiet,
            "work_dir": str(tmp / "seed_checkpoints")}
    result = support.run_job(_job_command("seed", spec), "notebook", args.quiet, _job_env(args))
    result["input_info"] = input_info
    return result


def rss_runs(args, tmp: Path) -> List[dict]:
    """The engine on generated inputs of args.rss_minutes, a small random Demucs, each in a
    fresh process; each input deleted after its run."""
    from highlightsense.benchmarks.bench import _prepare_input, _prepare_models, _say, run_engine

    crnn_args = copy.copy(args)
    if not (args.model or args.random_model):
        crnn_args.random_model = "full"
    crnn_args.separator = None
    models = _prepare_models(crnn_args, tmp, separator_size=args.rss_separator)
    runs = []
    for minutes in args.rss_minutes:
        info = _prepare_input(args, tmp, minutes)
        _say(args, f"memory: the engine on {minutes:g} minutes, {args.rss_separator} Demucs")
        r = run_engine(args, info, models, tmp)
        Path(info["path"]).unlink()
        runs.append({"minutes": minutes, "audio_sec": r["audio_sec"],
                     "peak_rss_mb": r["peak_rss_mb"], "rss_before_mb": r["rss_before_mb"],
                     "wall_sec": r["wall_sec"], "x_realtime": r["x_realtime"],
                     "disk_bytes": r["disk_bytes"], "separator": args.rss_separator,
                     "device": r["device"]})
    return runs


def _logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def score_agreement(engine: dict, seed: dict) -> dict:
    a, b = np.asarray(engine["confidences"]), np.asarray(seed["confidences"])
    out = {"windows_engine": len(a), "windows_seed": len(b)}
    n = min(len(a), len(b))
    if n:
        out["max_abs_prob_diff"] = float(np.abs(a[:n] - b[:n]).max())
        out["mean_abs_prob_diff"] = float(np.abs(a[:n] - b[:n]).mean())
        la, lb = _logit(a[:n]), _logit(b[:n])
        out["logit_pearson"] = (float(np.corrcoef(la, lb)[0, 1])
                                if n > 1 and la.std() > 0 and lb.std() > 0 else None)
        out["prob_std_engine"] = float(a.std())
    out["same_top"] = list(engine["top"]) == list(seed["top"])
    return out


def support_bytes(n) -> str:
    from highlightsense.benchmarks.bench import human_bytes

    return human_bytes(n)


def _target(name, value, goal, met, note="", unit="ratio"):
    return {"target": name, "value": value, "goal": goal, "met": met, "note": note, "unit": unit}


def comparison(report: dict) -> dict:
    engine, seed, rss = report.get("engine"), report.get("seed"), report.get("rss")
    out = {"targets": []}
    targets = out["targets"]
    if engine and seed:
        out["ratios"] = {
            "wall_seed_over_engine": seed["wall_sec"] / engine["wall_sec"],
            "peak_rss_seed_over_engine": seed["peak_rss_mb"] / engine["peak_rss_mb"],
            "disk_bytes_seed": seed["disk_bytes"], "disk_bytes_engine": engine["disk_bytes"],
            "disk_bytes_seed_over_engine": (seed["disk_bytes"] / engine["disk_bytes"]
                                            if engine["disk_bytes"] else None),
            "intermediate_bytes_seed": seed["intermediate_bytes"],
            "intermediate_bytes_engine": engine["file_write_calls_bytes"],
            "first_window_engine_over_seed": (
                engine["first_window_sec"] / seed["first_window_sec"]
                if engine.get("first_window_sec") and seed.get("first_window_sec") else None),
        }
        out["scores"] = score_agreement(engine, seed)
        conditions = []
        minutes = engine["audio_sec"] / 60
        if abs(minutes - 10) > 0.5:
            conditions.append(f"{minutes:.1f}-minute input, not 10")
        if engine.get("random", {}).get("separator") not in (None, "full"):
            conditions.append(f"{engine['random']['separator']} Demucs, not full-size")
        if seed.get("shifts", 1) != 1:
            conditions.append(f"the notebook's demucs with shifts {seed['shifts']}")
        out["conditions"] = conditions
        ratio = out["ratios"]["wall_seed_over_engine"]
        targets.append(_target("end to end vs the notebook's way", ratio, ">= 1.30x faster",
                               ratio >= 1.3))
        first = out["ratios"]["first_window_engine_over_seed"]
        targets.append(_target("time to first scored window / the notebook's", first, "< 0.25",
                               first is not None and first < 0.25))
    if engine and not engine.get("stage"):
        ratio = engine.get("wall_over_model")
        targets.append(_target("engine wall / model compute", ratio, "<= 1.10",
                               ratio is not None and ratio <= 1.10,
                               "" if ratio else "no model in this run"))
        written = engine["file_write_calls_bytes"]
        targets.append(_target("engine file data written beyond outputs and record", written,
                               "< 1 MB: no audio or feature intermediates", written < (1 << 20),
                               f"write_bytes, with filesystem metadata: "
                               f"{support_bytes(engine['disk_bytes'])}", unit="bytes"))
    if rss and len(rss) > 1:
        ratio = rss[-1]["peak_rss_mb"] / rss[0]["peak_rss_mb"]
        out["rss_ratio"] = ratio
        targets.append(_target(f"peak RSS {rss[-1]['minutes']:g} min / {rss[0]['minutes']:g} "
                               f"min", ratio, "<= 1.10", ratio <= 1.10,
                               f"{rss[0]['separator']} Demucs"))
    return out


def format_comparison(report: dict) -> str:
    from highlightsense.benchmarks.bench import human_bytes

    c = report["comparison"]
    engine, seed = report.get("engine"), report.get("seed")
    lines = []
    if "ratios" in c:
        r = c["ratios"]
        lines.append("== engine vs the notebook's way (same input, same model files) ==")
        lines.append(f"{'':<28} {'notebook':>12} {'engine':>12} {'ratio':>16}")
        lines.append(f"{'end-to-end wall':<28} {seed['wall_sec']:>10.1f} s "
                     f"{engine['wall_sec']:>10.1f} s {r['wall_seed_over_engine']:>11.2f}x faster")
        lines.append(f"{'peak RSS':<28} {seed['peak_rss_mb']:>9.0f} MB "
                     f"{engine['peak_rss_mb']:>9.0f} MB "
                     f"{r['peak_rss_seed_over_engine']:>12.2f}x less")
        ratio = r["disk_bytes_seed_over_engine"]
        lines.append(f"{'written to disk (write_bytes)':<28} {human_bytes(seed['disk_bytes']):>12} "
                     f"{human_bytes(engine['disk_bytes']):>12} "
                     f"{(f'{ratio:.0f}x less' if ratio else 'none by the engine'):>16}")
        lines.append(f"{'intermediate file data':<28} "
                     f"{human_bytes(r['intermediate_bytes_seed']):>12} "
                     f"{human_bytes(r['intermediate_bytes_engine']):>12}")
        first = r["first_window_engine_over_seed"]
        lines.append(f"{'first scored window':<28} {seed['first_window_sec']:>10.1f} s "
                     f"{engine['first_window_sec']:>10.1f} s "
                     f"{(f'{first:.3f} of its time' if first else '-'):>16}")
        s = c["scores"]
        if "max_abs_prob_diff" in s:
            pearson = s["logit_pearson"]
            lines.append(f"scores: {s['windows_engine']} / {s['windows_seed']} windows; max |p "
                         f"engine - p notebook| {s['max_abs_prob_diff']:.2g} (mean "
                         f"{s['mean_abs_prob_diff']:.2g}; std of p {s['prob_std_engine']:.2g}); "
                         f"logit correlation "
                         f"{'-' if pearson is None else format(pearson, '.4f')}; same top: "
                         f"{s['same_top']}" + (
                             " (the notebook's demucs shifts its input at random: "
                             "--notebook-shifts 0 for a like-for-like check)"
                             if seed.get("shifts", 1) else ""))
        if c.get("conditions"):
            lines.append("conditions differ from the targets': " + "; ".join(c["conditions"]))
    rss = report.get("rss")
    if rss:
        lines.append("== peak RSS over VOD length (engine) ==")
        for r in rss:
            lines.append(f"{r['minutes']:>6g} min: peak RSS {r['peak_rss_mb']:.0f} MB "
                         f"({r['rss_before_mb']:.0f} MB after imports), {r['wall_sec']:.1f} s "
                         f"wall, {r['x_realtime']:.2f}x realtime, {r['separator']} Demucs")
        if "rss_ratio" in c:
            lines.append(f"ratio {rss[-1]['minutes']:g} / {rss[0]['minutes']:g} min: "
                         f"{c['rss_ratio']:.3f}")
    if c["targets"]:
        lines.append("== targets ==")
        for t in c["targets"]:
            value = t["value"]
            shown = ("-" if value is None else human_bytes(value) if t["unit"] == "bytes"
                     else f"{value:.3f}")
            note = f" ({t['note']})" if t["note"] else ""
            lines.append(f"{'met    ' if t['met'] else 'NOT met'}  {t['target']}: {shown} "
                         f"(goal {t['goal']}){note}")
    return "\n".join(lines)


if __name__ == "__main__":
    from highlightsense.benchmarks.bench import main

    raise SystemExit(main(["--compare-notebook"] + __import__("sys").argv[1:]))
