"""The whole job the seed notebook's way (Final_Inference_Script, steps 5-10), for benchmarks.

    python -m highlightsense.benchmarks.seed_way INPUT --model CKPT [--separator NAME_OR_PATH]
        [--device cpu] [--shifts 1] [--work-dir DIR] [--json]

Steps, each as the notebook does it, each through the disk:
 5. separation (benchmarks.seed_separation's way): the input cut into 60 s 16-bit WAV chunks,
    `python -m demucs --two-stems vocals -d DEVICE --jobs 1` in a new process per chunk (the model
    reloaded each time; the CLI's shifts 1 unless --shifts), the chunks' vocals.wav and
    no_vocals.wav joined into vocals.wav and game.wav;
 6. features: librosa.load(sr=22050, mono=True) of each whole file, melspectrogram (80 mels, hop
    512), power_to_db(ref=np.max), stacked and saved as spectrogram.pt;
 7. the CRNN checkpoint loaded as the notebook loads it (torch.load weights_only=False, strict);
 8. windows of 30 s every 5 s, one at a time, padded to 60 s with the window's minimum and masked;
    raw_window_scores.csv written;
 9-10. the 99th-percentile threshold, the notebook's NMS, the top 20; highlight_results.csv.
Clips (step 11) are not cut: the engine's bench cuts none either.

Measured (a fresh process runs the job; see benchmarks/bench_support.py): end-to-end wall, each
step's seconds, time to the first scored window, the CRNN's forward time (hooks), peak RSS of the
process tree (this process's VmHWM, and while a demucs process runs, this process's RSS plus the
demucs process's VmHWM, polled every 0.1 s), bytes written by the whole tree (/proc/self/io
after the demucs processes are reaped: write_bytes, to the storage layer) less the final
outputs, and the intermediate files' sizes. The input stands for the notebook's downloaded
vod_audio.m4a. `--model` and `--separator` are the same files the engine's bench loads.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from highlightsense.benchmarks import bench_support as support

# The notebook's Config.
SAMPLE_RATE, N_MELS, HOP = 22050, 80, 512
WINDOW_SEC, STRIDE_SEC, THRESHOLD_PERCENTILE, NMS_WINDOW, TOP_N = 30.0, 5.0, 99, 10.0, 20


def _run_demucs(command, env) -> dict:
    """One demucs process to its end, watched: its peak RSS and the tree's (ours + its)."""
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    tail = []

    def drain():  # its progress bar, kept in memory: a file here would count as bytes written
        for raw in iter(lambda: proc.stderr.read(4096), b""):
            tail.append(raw)
            del tail[:-4]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    child_peak = tree_peak = 0.0
    while proc.poll() is None:
        try:
            hwm = support.peak_rss_mb(proc.pid)
            child_peak = max(child_peak, hwm)
            tree_peak = max(tree_peak, hwm + support.rss_mb())
        except (OSError, ValueError):
            pass  # it just ended
        time.sleep(0.1)
    reader.join()
    if proc.returncode != 0:
        text = b"".join(tail).decode(errors="replace")
        raise RuntimeError(f"demucs failed (exit {proc.returncode}): {text[-1500:]}")
    return {"sec": time.perf_counter() - began, "peak_rss_mb": child_peak,
            "tree_peak_rss_mb": tree_peak}


def seed_separate_watched(input_path, separator: str, ckpt_dir: Path, device: str,
                          shifts: int, env=None) -> dict:
    """Step 5: benchmarks.seed_separation's chunking and joining, with our own watcher on each
    demucs process (RSS of the tree; progress kept off the disk; --shifts)."""
    from highlightsense.benchmarks.seed_separation import _join, split_into_wavs

    repo, name = support.demucs_cli_model(separator)
    began = time.perf_counter()
    chunks = split_into_wavs(input_path, ckpt_dir / "chunks_temp", 60)
    split_sec = time.perf_counter() - began
    out_dir = ckpt_dir / "demucs_temp"
    runs = []
    for chunk in chunks:
        command = [sys.executable, "-m", "demucs", "--two-stems", "vocals"]
        command += ["--repo", repo] if repo else []
        command += ["-n", name, "-d", device, "--jobs", "1"]
        command += ["--shifts", str(shifts)] if shifts != 1 else []
        command += ["-o", str(out_dir), str(chunk)]
        runs.append(_run_demucs(command, env))
    began = time.perf_counter()
    folders = [out_dir / name / chunk.stem for chunk in chunks]
    vocals, game = ckpt_dir / "vocals.wav", ckpt_dir / "game.wav"
    _join([f / "vocals.wav" for f in folders], vocals)
    _join([f / "no_vocals.wav" for f in folders], game)
    join_sec = time.perf_counter() - began
    files = [*chunks, *(f / s for f in folders for s in ("vocals.wav", "no_vocals.wav")),
             vocals, game]
    return {"split_sec": split_sec, "demucs_sec": sum(r["sec"] for r in runs),
            "join_sec": join_sec, "processes": len(runs),
            "demucs_peak_rss_mb": max((r["peak_rss_mb"] for r in runs), default=0.0),
            "tree_peak_rss_mb": max((r["tree_peak_rss_mb"] for r in runs), default=0.0),
            "files": files, "vocals": vocals, "game": game}


def seed_features(vocals, game, ckpt_dir: Path):
    """Step 6, as the notebook's audio_to_melspec: (2, 80, frames) float32, saved to disk."""
    import librosa
    import torch

    def audio_to_melspec(path):
        y, _ = librosa.load(path, sr=SAMPLE_RATE, mono=True)
        mel = librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE, n_mels=N_MELS, hop_length=HOP)
        return librosa.power_to_db(mel, ref=np.max)

    vocals_mel, game_mel = audio_to_melspec(str(vocals)), audio_to_melspec(str(game))
    length = min(vocals_mel.shape[1], game_mel.shape[1])
    spectrogram = torch.from_numpy(np.stack([vocals_mel[:, :length], game_mel[:, :length]],
                                            axis=0)).float()
    torch.save(spectrogram, ckpt_dir / "spectrogram.pt")
    return spectrogram


def seed_model(checkpoint, device):
    """Step 7: the notebook's load (weights_only=False, strict), into the same CRNN class."""
    import torch

    from highlightsense.model.crnn import HighlightSenseModel, infer_config

    state = torch.load(checkpoint, map_location=device, weights_only=False)["model"]
    model = HighlightSenseModel.from_config(infer_config(state)).to(device)
    model.load_state_dict(state)
    return model.eval()


def seed_windows(model, spectrogram, device, on_first=None):
    """Step 8, the notebook's loop: [index, start_sec, end_sec, probability] per window."""
    import torch
    import torch.nn.functional as F

    total = spectrogram.shape[2]
    window_frames = int((WINDOW_SEC * SAMPLE_RATE) / HOP) + 1
    stride_frames = int((STRIDE_SEC * SAMPLE_RATE) / HOP)
    target_frames = int((60 * SAMPLE_RATE) / HOP)
    rows = []
    with torch.no_grad():
        for i in range(max(1, (total - window_frames) // stride_frames + 1)):
            start, end = i * stride_frames, i * stride_frames + window_frames
            if end > total:
                end, start = total, max(0, total - window_frames)
            window = spectrogram[:, :, start:end]
            actual = window.shape[2]
            if target_frames - actual > 0:
                window = F.pad(window, (0, target_frames - actual), value=window.min().item())
            mask = torch.zeros(target_frames)
            mask[:actual] = 1
            logits, _ = model(window.unsqueeze(0).to(device), mask.unsqueeze(0).to(device))
            prob = torch.sigmoid(logits).item()
            rows.append([i, start * HOP / SAMPLE_RATE, end * HOP / SAMPLE_RATE, prob])
            if i == 0 and on_first:
                on_first()
    return rows


def apply_nms(detections, nms_window):
    """The notebook's NMS, as it is."""
    if not detections:
        return []
    detections = sorted(detections, key=lambda x: x[3], reverse=True)
    kept, removed = [], set()
    for i, det in enumerate(detections):
        if i in removed:
            continue
        kept.append(det)
        for j, other in enumerate(detections[i + 1:], start=i + 1):
            if j in removed:
                continue
            overlaps = min(det[2], other[2]) > max(det[1], other[1])
            if overlaps or abs(det[1] - other[1]) < nms_window:
                removed.add(j)
    return sorted(kept, key=lambda x: x[1])


def seed_select(rows):
    """Steps 9-10: percentile threshold, NMS, the top N by confidence."""
    threshold = np.percentile([r[3] for r in rows], THRESHOLD_PERCENTILE)
    above = [r for r in rows if r[3] >= threshold]
    final = apply_nms(above, NMS_WINDOW)
    return float(threshold), above, sorted(final, key=lambda x: x[3], reverse=True)[:TOP_N]


def _write_csv(path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def seed_job(spec: dict) -> dict:
    """The whole job on spec['input'], in spec['work_dir'] (the notebook's checkpoint folder)."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    quiet = spec.get("quiet", False)
    from highlightsense.model.separator import pick_device

    device = str(pick_device(spec.get("device")))  # auto: the notebook's cuda-if-available
    say = (lambda text: None) if quiet else (
        lambda text: print(text, file=sys.stderr, flush=True))
    support.start_io()
    rss_before = support.rss_mb()
    work = Path(spec["work_dir"])
    ckpt_dir, out_dir = work / "checkpoints", work / "output"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = {}

    say("step 5: 60 s WAV chunks, one demucs process per chunk")
    sep = seed_separate_watched(spec["input"], spec["separator"], ckpt_dir, device,
                                spec.get("shifts", 1), dict(os.environ))
    steps.update(split=sep["split_sec"], demucs=sep["demucs_sec"], join=sep["join_sec"])

    say("step 6: librosa features of the whole separated files")
    began = time.perf_counter()
    spectrogram = seed_features(sep["vocals"], sep["game"], ckpt_dir)
    steps["features"] = time.perf_counter() - began

    began = time.perf_counter()
    model = seed_model(spec["model"], device)
    steps["model_load"] = time.perf_counter() - began
    timer = support.ForwardTimer("crnn", device).attach(model)

    say(f"step 8: {spectrogram.shape[2]} frames, one window at a time")
    first = {}
    began = time.perf_counter()
    rows = seed_windows(model, spectrogram, device,
                        on_first=lambda: first.setdefault("sec", time.perf_counter() - t0))
    raw_csv = _write_csv(ckpt_dir / "raw_window_scores.csv",
                         ["window_index", "start_sec", "end_sec", "confidence"], rows)
    steps["windows"] = time.perf_counter() - began

    began = time.perf_counter()
    threshold, above, top = seed_select(rows)
    highlights = _write_csv(out_dir / "highlight_results.csv", None, [
        [i + 1, d[1], d[2], d[3]] for i, d in enumerate(top)])
    steps["select"] = time.perf_counter() - began
    wall = time.perf_counter() - t0

    intermediates = [*sep["files"], ckpt_dir / "spectrogram.pt"]
    outputs = [raw_csv, highlights]
    audio_sec = (spectrogram.shape[2] - 1) * HOP / SAMPLE_RATE
    own_peak = support.peak_rss_mb()
    result = {
        "kind": "seed", "input": spec["input"], "audio_sec": audio_sec, "wall_sec": wall,
        "x_realtime": audio_sec / wall, "first_window_sec": first.get("sec"), "steps": steps,
        "demucs_processes": sep["processes"], "shifts": spec.get("shifts", 1),
        "windows": len(rows), "confidences": [r[3] for r in rows],
        "top": [r[0] for r in top], "threshold": threshold,
        "model_compute": {"crnn": timer.figures()}, "model_compute_sec": timer.sec,
        "rss_before_mb": rss_before, "own_peak_rss_mb": own_peak,
        "demucs_peak_rss_mb": sep["demucs_peak_rss_mb"],
        "peak_rss_mb": max(own_peak, sep["tree_peak_rss_mb"]),
        "intermediate_bytes": sum(p.stat().st_size for p in intermediates),
        "intermediate_files": len(intermediates),
        "output_bytes": sum(p.stat().st_size for p in outputs),
        "output_pages": sum(support.pages(p.stat().st_size) for p in outputs),
        "filesystem_work": support.filesystem(work),
        "device": support.device_info(device),
    }
    result["io"] = support.final_io()
    result["disk_bytes"] = max(0, result["io"]["write_bytes"] - result["output_pages"])
    return result


def format_seed(r: dict) -> str:
    from highlightsense.benchmarks.bench import human_bytes

    s = r["steps"]
    return "\n".join([
        f"steps    : split {s['split']:.1f} s, demucs {s['demucs']:.1f} s ("
        f"{r['demucs_processes']} processes, shifts {r['shifts']}), join {s['join']:.1f} s, "
        f"features {s['features']:.1f} s, model load {s['model_load']:.1f} s, windows "
        f"{s['windows']:.1f} s ({r['windows']} one at a time), select {s['select']:.2f} s",
        f"end to end: {r['wall_sec']:.1f} s wall, {r['x_realtime']:.2f}x realtime",
        f"first scored window: {r['first_window_sec']:.1f} s after the start",
        f"model compute: CRNN {r['model_compute_sec']:.1f} s in "
        f"{r['model_compute']['crnn']['calls']} calls (Demucs runs in its own processes)",
        f"peak RSS : {r['peak_rss_mb']:.0f} MB of the process tree (this process "
        f"{r['own_peak_rss_mb']:.0f} MB, a demucs process {r['demucs_peak_rss_mb']:.0f} MB)",
        f"written  : {human_bytes(r['disk_bytes'])} to disk by the tree (write_bytes, less "
        f"{human_bytes(r['output_bytes'])} of outputs); intermediate files "
        f"{human_bytes(r['intermediate_bytes'])} in {r['intermediate_files']} files; work "
        f"folder on {r['filesystem_work']}",
        f"device   : {support.describe_device(r['device'])}",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m highlightsense.benchmarks.seed_way",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("input", nargs="?", help="media file (the notebook's vod_audio.m4a)")
    p.add_argument("--model", help="CRNN checkpoint")
    p.add_argument("--separator", default="htdemucs",
                   help="demucs model name, .th file or repo folder (default htdemucs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--shifts", type=int, default=1, help="demucs --shifts (default 1, the CLI's)")
    p.add_argument("--threads", type=int)
    p.add_argument("--work-dir", help="keep the notebook's folders here (default: a temp folder)")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        spec = json.loads(args.job)
        if spec.get("work_dir"):
            support.finish_job(seed_job(spec))
        with tempfile.TemporaryDirectory(prefix="hs-seed-", dir=spec.get("tmp")) as tmp:
            result = seed_job(dict(spec, work_dir=tmp))
        support.finish_job(result)  # the folder's removal wrote nothing more
    if not args.input or not args.model:
        p.error("INPUT and --model are needed")
    spec = {"input": args.input, "model": args.model, "separator": args.separator,
            "device": args.device, "shifts": args.shifts, "threads": args.threads,
            "quiet": args.quiet}
    if args.work_dir:
        spec["work_dir"] = args.work_dir
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = [sys.executable, "-m", "highlightsense.benchmarks.seed_way", "--job",
               json.dumps(spec)]
    result = support.run_job(command, "seed", args.quiet, env)
    print(json.dumps(result) if args.json else format_seed(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
