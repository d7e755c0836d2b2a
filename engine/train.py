"""`train`: fit (or fine-tune) the CRNN on labelled VODs, on the features `detect` scores.

Examples come through detect's own stages: the decoder and the CRNN scorer's feature chain
(Demucs separation, then log-mel), whose levels (dB before the reference) are kept with the
second pass's HeldLevels; the whole VOD's reference (each stem's loudest frame) is applied with
the features' own to_db, as detect's second pass applies it; the windows are cut, padded to 60 s
with their own minimum and masked by the Windows operator itself. So a model learns on exactly
the frames it will score. Windows are labelled by evaluate's rule (engine.labels.window_label).

The recipe is the original's by default (AdamW lr 1e-4, batch 32, BCE with logits, 10 epochs),
validated on whole VODs held out (neighbouring windows overlap, so a split by window would leak).
Separation dominates: each VOD's levels are separated once per run, and with --cache DIR once
for good (LevelCache). After each epoch the last state (model, optimizer, history) goes to the
work folder, so a rerun resumes after the last finished epoch; --out is the best epoch by
validation AP, in the notebook's format {'model': state_dict, 'epochs': n}.
"""
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from highlightsense.engine import grid
from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.evaluate import average_precision, match_hits, precision_at
from highlightsense.engine.files import atomic_file, content_identity
from highlightsense.engine.labels import Label, check_within, window_label

log = logging.getLogger("highlightsense")

CACHE_VERSION = 1  # bump when what a cached file holds changes


@dataclass(frozen=True)
class TrainOptions:
    out: str
    work: Optional[str] = None  # default: OUT + ".work"
    init: Optional[str] = None  # a checkpoint to fine-tune
    arch: str = "full"  # model.crnn.ARCHS (ignored with init: its shapes decide)
    epochs: int = 10
    lr: float = 1e-4
    batch: int = 32
    val_fraction: float = 0.2  # of the VODs, held out whole
    seed: int = 0
    negatives: str = "all"  # engine.labels.NEGATIVES
    cache: Optional[str] = None
    cache_gb: float = 20.0
    restart: bool = False

    @property
    def work_dir(self) -> Path:
        return Path(self.work) if self.work else Path(str(self.out) + ".work")


# ---- the levels cache ------------------------------------------------------------------------

class LevelCache:
    """Each VOD's separated mel levels (stems, mels, frames) float32, as .npy files named by a
    key of the media's content, the separator and the feature settings; at most max_bytes in
    all, the least recently used removed first. The user's training data, asked for by them."""

    def __init__(self, folder, max_gb: float):
        self.folder = Path(folder)
        self.max_bytes = int(max_gb * 2 ** 30)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HighlightSenseError(f"cannot make cache folder {self.folder}: "
                                      f"{e.strerror}; choose another --cache") from None

    @staticmethod
    def key(media: str, cfg: Config, device: torch.device) -> str:
        separator = (content_identity(cfg.separator) if os.path.isfile(cfg.separator)
                     else cfg.separator)
        what = {"version": CACHE_VERSION, "media": content_identity(media),
                "audio_stream": cfg.audio_stream, "separator": separator, "half": cfg.half,
                "device": device.type,
                "features": {"rate": grid.FEATURE_RATE, "n_fft": grid.N_FFT, "hop": grid.HOP,
                             "n_mels": 80}}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> Optional[np.ndarray]:
        path = self.folder / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            levels = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            log.warning("cache file %s is unreadable: separating again", path.name)
            return None
        os.utime(path)  # recently used
        return levels

    def put(self, key: str, levels: np.ndarray) -> None:
        if levels.nbytes > self.max_bytes:
            log.warning("levels of %.1f GB exceed --cache-gb: not cached", levels.nbytes / 2 ** 30)
            return
        self._evict(self.max_bytes - levels.nbytes)
        try:
            with atomic_file(self.folder / f"{key}.npy") as f:
                np.save(f, np.ascontiguousarray(levels))
        except HighlightSenseError as e:
            log.warning("%s (training goes on without caching it)", e)

    def _evict(self, room: int) -> None:
        files = sorted(self.folder.glob("*.npy"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total <= room:
                break
            total -= old.stat().st_size
            old.unlink()


# ---- examples: detect's stages ---------------------------------------------------------------

def separated_levels(media: str, cfg: Config, scorer) -> np.ndarray:
    """The levels (stems, mels, frames) detect's first pass computes for `media`: its decoder and
    the scorer's feature stages, the levels held as for detect's second pass."""
    from highlightsense.engine.operator import FeatureRun
    from highlightsense.engine.passes import open_source
    from highlightsense.engine.pipeline import Pipeline, run_async
    from highlightsense.engine.second_pass import HeldLevels

    source = open_source(media, cfg)
    duration = source.info.duration_sec
    if duration is None:
        source.close()
        raise HighlightSenseError(f"{media}: its duration is unknown; train needs files")
    # Room for every frame, with some to spare: the decoded length may exceed the header's.
    frames = grid.n_frames(int(duration * grid.AUDIO_RATE)) + 2 * grid.PADDED_FRAMES
    held = HeldLevels(2, 80, frames)
    stages = scorer.feature_stages(cfg, FeatureRun(hold=held))
    run_async(Pipeline(source, stages, queue_size=cfg.queue_size).run())
    if held.frames.stop < held.offered:
        raise HighlightSenseError(f"{media} is longer than its header says; remux it")
    return held.get(0, held.frames.stop)


@dataclass
class Vod:
    """One labelled source, ready to cut windows from."""

    source: str
    labels: List[Label]
    levels: np.ndarray  # (stems, mels, frames): dB before the reference
    windows: List[tuple] = field(default_factory=list)  # (index, start_sec, end_sec) all of them
    ys: List[Optional[int]] = field(default_factory=list)  # per window: 1, 0 or None (left out)

    @property
    def reference(self) -> torch.Tensor:
        """Each stem's loudest level: power_to_db(ref=np.max) over the whole VOD, as detect's
        second pass ends up with."""
        return torch.from_numpy(np.asarray(self.levels).max(axis=(1, 2)).astype(np.float32))


def prepare(media: str, labels: List[Label], cfg: Config, scorer, cache: Optional[LevelCache],
            negatives: str) -> Vod:
    levels = None
    key = cache.key(media, cfg, scorer.device) if cache else None
    if cache:
        levels = cache.get(key)
    if levels is None:
        levels = separated_levels(media, cfg, scorer)
        if cache:
            cache.put(key, levels)
    vod = Vod(media, labels, levels)
    total = levels.shape[-1]
    check_within(labels, media, grid.frames_to_sec(total))
    for i in range(grid.num_windows(total, cfg.window_frames, cfg.stride_frames)):
        start = i * cfg.stride_frames
        end = min(start + cfg.window_frames, total)
        a, b = grid.frames_to_sec(start), grid.frames_to_sec(end)
        vod.windows.append((i, a, b))
        vod.ys.append(window_label(a, b, labels, negatives))
    return vod


def window_batch(vod: Vod, indices: Sequence[int], cfg: Config):
    """WindowBatch (engine.chunks) of these windows of `vod`, as detect scores them: features
    under the whole VOD's reference (mel_features.to_db), cut and padded by the Windows
    operator. Only each window's frames are made."""
    from highlightsense.engine.chunks import FrameChunk, WindowBatch
    from highlightsense.operators.mel_features import to_db
    from highlightsense.operators.windows import Windows

    ref, total, parts = vod.reference, vod.levels.shape[-1], []
    for i in indices:
        start = i * cfg.stride_frames
        level = torch.from_numpy(np.array(vod.levels[..., start:start + cfg.window_frames]))
        windows = Windows(cfg.window_frames, cfg.stride_frames, grid.PADDED_FRAMES,
                          batch_size=1, first_index=i)
        out = windows.process(FrameChunk(to_db(level, ref)[0].numpy(), start)) + windows.flush()
        parts.append(out[0])
    assert all(p.index[0] == i for p, i in zip(parts, indices)) and total > 0
    return WindowBatch(index=np.concatenate([p.index for p in parts]),
                       start_frame=np.concatenate([p.start_frame for p in parts]),
                       end_frame=np.concatenate([p.end_frame for p in parts]),
                       frames=np.concatenate([p.frames for p in parts]),
                       mask=np.concatenate([p.mask for p in parts]))


# ---- the loop --------------------------------------------------------------------------------

def group_for_training(labels: Sequence[Label]) -> Dict[str, List[Label]]:
    """{media file: its labels}; a source that is no local file is refused, naming its row."""
    grouped: Dict[str, List[Label]] = {}
    for lab in labels:
        if "://" in lab.source or not os.path.isfile(lab.source):
            raise HighlightSenseError(f"{lab.where}: {lab.source} is not a media file here; "
                                      f"train reads local files (download the VOD first)")
        grouped.setdefault(os.path.abspath(lab.source), []).append(lab)
    return grouped


def split_by_vod(sources: Sequence[str], fraction: float, seed: int):
    """(training sources, validation sources): whole VODs, never windows, chosen with `seed`."""
    order = list(np.random.default_rng([seed, 7]).permutation(sorted(sources)))
    n_val = 0 if len(order) < 2 or fraction <= 0 else min(len(order) - 1,
                                                          max(1, round(fraction * len(order))))
    return sorted(order[n_val:]), sorted(order[:n_val])


def new_model(opts: TrainOptions, device):
    from highlightsense.model.checkpoint import load_model
    from highlightsense.model.crnn import ARCHS, HighlightSenseModel

    if opts.init:
        return load_model(opts.init, device)
    if opts.arch not in ARCHS:
        raise HighlightSenseError(f"unknown --arch {opts.arch}: one of {', '.join(ARCHS)}")
    torch.manual_seed(opts.seed)
    return HighlightSenseModel.from_config(ARCHS[opts.arch]).to(device)


def fingerprint(opts: TrainOptions, cfg: Config, labels: Sequence[Label]) -> str:
    """What a resumed run must share with the interrupted one (not --epochs: a rerun with more
    goes on from where the last ended)."""
    what = {"labels": sorted((lab.source, lab.start_sec, lab.end_sec, lab.label) for lab in labels),
            "init": content_identity(opts.init) if opts.init else None,
            **{k: v for k, v in asdict(opts).items()
               if k in ("arch", "lr", "batch", "val_fraction", "seed", "negatives")},
            "window": [cfg.window_sec, cfg.stride_sec], "separator": cfg.separator}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def validate(scorer, vods: Sequence[Vod], cfg: Config) -> Dict:
    """Validation AP over the held-out VODs' labelled windows and the mean P@5 of the
    highlights detect's selection would choose on each."""
    from highlightsense.engine.selection import choose
    from highlightsense.operators.select import window_scores

    scorer.model.eval()
    scores, ys, p5 = [], [], []
    for vod in vods:
        windows = []
        for a in range(0, len(vod.windows), 16):
            batch = window_batch(vod, range(a, min(a + 16, len(vod.windows))), cfg)
            windows += window_scores(scorer.score(batch))
        for w, y in zip(windows, vod.ys):
            if y is not None:
                scores.append(w.confidence)
                ys.append(y)
        top = choose(windows, cfg).top
        hits = match_hits([(w.start_sec, w.end_sec) for w in top],
                          [lab.centre for lab in vod.labels if lab.label == 1])
        p5.append(precision_at(hits, 5))
    return {"val_ap": average_precision(scores, ys) if ys else None,
            "val_p5": float(np.mean(p5)) if p5 else None}


@dataclass
class TrainResult:
    out: Path
    best_epoch: Optional[int]
    best_ap: Optional[float]
    history: List[Dict]


def train(grouped: Dict[str, List[Label]], cfg: Config, opts: TrainOptions,
          on_epoch=None) -> TrainResult:
    """Train on the labelled sources `grouped` ({media path: its labels}). on_epoch(dict) is
    told each epoch's figures (loss, val_ap, val_p5, seconds, windows_per_sec, separate_sec)."""
    from highlightsense.model.crnn_scorer import CrnnScorer
    from highlightsense.model.separator import pick_device
    from highlightsense.operators.sources.decode import probe

    if opts.epochs < 1 or opts.batch < 1 or opts.lr <= 0:
        raise HighlightSenseError("--epochs and --batch must be at least 1, --lr positive")
    for media, labels in grouped.items():  # before any model is loaded or VOD separated
        check_within(labels, media, probe(media)["duration_sec"])
    if opts.init and os.path.abspath(opts.init) == os.path.abspath(opts.out):
        raise HighlightSenseError(f"--out {opts.out} would overwrite --init, the checkpoint "
                                  f"being fine-tuned; choose another --out")
    device = pick_device(cfg.device)
    model = new_model(opts, device)
    scorer = CrnnScorer(model, device, batch_size=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr)
    labels = [lab for labs in grouped.values() for lab in labs]
    work = opts.work_dir
    fp = fingerprint(opts, cfg, labels)  # before --out is written (it may sit beside --init)
    state = resume_state(work, fp, opts.restart)
    history, best_ap, best_epoch = [], None, None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best_ap, best_epoch = state["history"], state["best_ap"], state["best_epoch"]
        log.info("resuming after epoch %d (from %s)", state["epochs"], work)
    train_sources, val_sources = split_by_vod(list(grouped), opts.val_fraction, opts.seed)
    if not val_sources:
        log.warning("no VOD held out for validation (one labelled VOD, or --val-fraction 0): "
                    "--out is the last epoch")
    cache = LevelCache(opts.cache, opts.cache_gb) if opts.cache else None
    vods: Dict[str, Vod] = {}
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(len(history), opts.epochs):
        began = time.perf_counter()
        for media in train_sources + val_sources:  # epoch 1 separates; later ones reuse
            if media not in vods:
                vods[media] = prepare(media, grouped[media], cfg, scorer, cache, opts.negatives)
        separate_sec = time.perf_counter() - began
        examples = [(m, w[0], y) for m in train_sources
                    for w, y in zip(vods[m].windows, vods[m].ys) if y is not None]
        if not examples or not any(y for _, _, y in examples):
            raise HighlightSenseError("no positive training window: the labels cover no "
                                      "window of the training VODs by half")
        # Seeded per epoch: a resumed run draws the same batches as an uninterrupted one.
        rng = np.random.default_rng([opts.seed, epoch])
        torch.manual_seed(opts.seed * 1009 + epoch)
        model.train()
        losses = []
        order = rng.permutation(len(examples))
        fit_began = time.perf_counter()
        for a in range(0, len(examples), opts.batch):
            part = [examples[j] for j in order[a:a + opts.batch]]
            losses.append(step(model, optimizer, loss_fn, vods, part, cfg, device))
        fit_sec = time.perf_counter() - fit_began
        figures = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "windows": len(examples),
                   "windows_per_sec": len(examples) / fit_sec if fit_sec > 0 else None,
                   "separate_sec": separate_sec,
                   **validate(scorer, [vods[m] for m in val_sources], cfg)}
        figures["seconds"] = time.perf_counter() - began
        history.append(figures)
        better = (not val_sources or best_ap is None
                  or (figures["val_ap"] is not None and figures["val_ap"] > best_ap))
        if better:
            best_ap, best_epoch = figures["val_ap"], epoch + 1
            save_checkpoint(opts.out, model, epoch + 1)
        save_state(work, model, optimizer, history, best_ap, best_epoch, fp)
        say_epoch(figures, opts.epochs, better and bool(val_sources))
        if on_epoch:
            on_epoch(figures)
    return TrainResult(Path(opts.out), best_epoch, best_ap, history)


def step(model, optimizer, loss_fn, vods: Dict[str, Vod], part, cfg: Config, device) -> float:
    """One optimizer step on the examples `part` [(media, window index, label)]."""
    batches = [window_batch(vods[m], [i], cfg) for m, i, _ in part]
    x = torch.from_numpy(np.concatenate([b.frames for b in batches])).to(device, torch.float32)
    mask = torch.from_numpy(np.concatenate([b.mask for b in batches])).to(device, torch.float32)
    y = torch.tensor([float(label) for _, _, label in part], device=device)
    logits, _ = model(x, mask)
    loss = loss_fn(logits[:, 0], y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def say_epoch(f: Dict, epochs: int, best: bool) -> None:
    val = ("no validation" if f["val_ap"] is None else
           f"validation AP {f['val_ap']:.3f}, P@5 {f['val_p5']:.3f}")
    speed = f", {f['windows_per_sec']:.1f} windows/s" if f["windows_per_sec"] else ""
    sep = f", separating {f['separate_sec']:.1f} s" if f["separate_sec"] >= 0.05 else ""
    log.info("epoch %d/%d: loss %.4f, %s (%d windows, %.1f s%s%s)%s", f["epoch"], epochs,
             f["loss"], val, f["windows"], f["seconds"], speed, sep, " best" if best else "")


# ---- checkpoints -----------------------------------------------------------------------------

def save_checkpoint(path, model, epochs: int) -> None:
    """The notebook's checkpoint format, {'model': state_dict, 'epochs': n}, atomically."""
    with atomic_file(Path(path)) as f:
        torch.save({"model": model.state_dict(), "epochs": epochs}, f)


LAST = "last.pt"


def save_state(work: Path, model, optimizer, history, best_ap, best_epoch, fp: str) -> None:
    """The last epoch's model and optimizer with the run's history, in one file written
    atomically: a crash leaves the previous epoch's whole."""
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HighlightSenseError(f"cannot make work folder {work}: {e.strerror}; choose "
                                  f"another --work") from None
    with atomic_file(work / LAST) as f:
        torch.save({"model": model.state_dict(), "epochs": len(history),
                    "optimizer": optimizer.state_dict(), "history": history,
                    "best_ap": best_ap, "best_epoch": best_epoch, "fingerprint": fp}, f)


def resume_state(work: Path, fp: str, restart: bool) -> Optional[Dict]:
    """The interrupted run's state in `work`, when there is one of the same settings."""
    if restart or not (work / LAST).is_file():
        return None
    try:
        state = torch.load(work / LAST, map_location="cpu", weights_only=True)
    except Exception:  # torch's errors for a damaged file vary
        log.warning("%s is unreadable: starting over", work / LAST)
        return None
    if state.get("fingerprint") != fp:
        raise HighlightSenseError(
            f"the work folder {work} holds a training run with other labels or settings; "
            f"pass --restart to start over there, or another --work")
    return state
