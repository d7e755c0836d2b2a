"""Configuration: Config's defaults (the one place they are set), the packaged default preset
(overriding nothing), then a YAML file (--config), then flags.

Unknown keys and bad values are refused by name, in one line.
"""
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import yaml

from highlightsense.engine import grid
from highlightsense.engine.errors import HighlightSenseError

PRESETS = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Config:
    """Every setting and its default: the one place defaults are set. configs/default.yaml
    overrides none of them (it lists them, commented out, to copy from); other presets
    (configs/demo.yaml), a --config file and the flags override them in that order. The CLI's
    help shows these defaults (default_of)."""

    # Windows: 30 s every 5 s on the seed's frame grid (1292 frames every 215 = 4.992 s).
    window_sec: float = 30.0  # window length; under 60 s, the model's padded training length
    stride_sec: float = 5.0  # window step
    # Selection.
    threshold_percentile: float = 99.0  # keep windows at or above this percentile of all scores
    threshold: Optional[float] = None  # or an absolute score (0-1): used instead of the percentile
    nms_window: float = 10.0  # a window starting within this many seconds of a kept one is dropped
    top_n: int = 20  # at most this many clips
    order: str = "rank"  # the table's rows (and exports'): "rank" (best first) or "time"
    # Clips.
    clips: bool = True  # cut clips/highlight_NN_<start> from the source
    exact_cuts: bool = False  # re-encode so clips start exactly at the window (False: stream copy)
    # Engine.
    audio_stream: Optional[int] = None  # which audio stream to analyse (0 = first); None: the first
    # The recording's own voice and game tracks (audio stream indexes, counted as audio_stream;
    # "2+3" sums two), taken instead of separating with Demucs; tracks "auto" picks them by title.
    voice_track: Optional[str] = None
    game_track: Optional[str] = None
    tracks: Optional[str] = None  # "auto": voice_track and game_track from the streams' titles
    batch_size: Optional[int] = None  # windows per scoring call; None: the scorer's choice (1 for
    #                                   the CRNN on a CPU, its GRU is faster one window at a time;
    #                                   else 16)
    chunk_sec: float = 1.0  # seconds of audio per decoded chunk
    queue_size: int = 8  # chunks waiting between two stages at most (bounds memory)
    # Scoring. Without a model checkpoint, the weights-free loudness scorer runs on the mix.
    model: Optional[str] = None  # path of a HighlightSense CRNN checkpoint (best_model.pt)
    separator: str = "htdemucs"  # demucs model name, or a local .th / .safetensors / repo folder
    separator_batch: int = 1  # Demucs segments per forward call (more keeps a GPU busy)
    device: str = "auto"  # cuda, then mps, then cpu; or name one
    half: bool = False  # float16 separation (CUDA only)
    exact_reference: bool = True  # the seed's dB reference is the whole VOD's loudest frame: score
    #                               the windows before it again once it is known (a second pass)
    hls_fragments: int = 4  # HLS segments fetched at once for URL inputs
    allow_private_hosts: bool = False  # let a URL on a public host lead to loopback, private or
    #                                    link-local addresses (segments, redirects)
    # Reliability.
    max_duration_sec: Optional[float] = 86400.0  # longer inputs are refused (24 h; None: no limit)
    progress_every_sec: float = 5.0  # how often detect saves its progress record (for resuming)
    shard_minutes: Optional[float] = None  # score a long input in time shards this long, spread
    #                                        over the workers (engine.shards); None: one stream
    rescore_cache_mb: int = 64  # first-pass levels kept for the second pass (exact_reference), up
    #                             to this much (40 min at 64 MB); past it, it separates again

    @property
    def window_frames(self) -> int:
        return grid.window_frames(self.window_sec)

    @property
    def stride_frames(self) -> int:
        return grid.stride_frames(self.stride_sec)

    def selection_settings(self) -> Dict[str, Any]:
        """What a run chose with, recorded in highlights.json: `select` on that folder starts
        from these (the window settings are fixed by the scores)."""
        return {k: getattr(self, k) for k in SELECTION_KEYS}


# The settings highlights.json records (Config.selection_settings): the windows', then those
# `select` takes again from the folder where its flags leave them unset.
SELECTION_KEYS = ("window_sec", "stride_sec", "threshold_percentile", "threshold", "nms_window",
                  "top_n", "order", "clips", "exact_cuts")
ORDERS = ("rank", "time")


_TYPES = {f.name: f.type for f in fields(Config)}
_DEFAULTS = {f.name: f.default for f in fields(Config)}


def default_of(key: str, fmt: Optional[Callable[[Any], str]] = None) -> str:
    """Config's default for `key` as help text shows it: numbers without a needless ".0" (99,
    not 99.0), or as `fmt` writes it (e.g. a duration as H:MM:SS)."""
    value = _DEFAULTS[key]
    if fmt is not None:
        return fmt(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def track_sum(text: str) -> tuple:
    """The audio stream indexes of a track setting: "1" -> (1,), "2+3" -> (2, 3)."""
    parts = str(text).replace(" ", "").split("+")
    if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise HighlightSenseError(
            f"track {text!r} is not an audio stream index or a sum of distinct ones (2+3)")
    return tuple(int(p) for p in parts)


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = _TYPES[key]
    if key in ("voice_track", "game_track") and isinstance(value, int) \
            and not isinstance(value, bool):
        value = str(value)  # YAML reads `voice_track: 1` as a number
    if value is None and kind in (Optional[int], Optional[str], Optional[float]):
        return None
    ok = {
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        Optional[int]: isinstance(value, int) and not isinstance(value, bool),
        Optional[float]: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str) and value != "",
        Optional[str]: isinstance(value, str) and value != "",
    }[kind]
    if ok and kind in (float, Optional[float]) and not math.isfinite(value):
        ok = False  # YAML's .nan and .inf, a flag's nan: no setting means either
    if not ok:
        want = {float: "a finite number", int: "a whole number",
                Optional[int]: "a whole number or null",
                Optional[float]: "a finite number or null",
                bool: "true or false", str: "a name", Optional[str]: "a path or null"}[kind]
        raise HighlightSenseError(f"{source}: '{key}' must be {want}, not {value!r}")
    return float(value) if kind in (float, Optional[float]) else value


def _check(cfg: Config) -> Config:
    def bad(key, why):
        raise HighlightSenseError(f"config: '{key}' = {getattr(cfg, key)!r} {why}")

    if cfg.window_sec <= 0:
        bad("window_sec", "must be positive")
    if cfg.window_frames > grid.PADDED_FRAMES:
        bad("window_sec", f"must stay under {grid.PADDED_SECONDS} s, the padded length the "
                          f"model was trained on ({grid.PADDED_FRAMES} frames)")
    if cfg.stride_frames < 1:
        bad("stride_sec", f"must be at least one frame ({grid.HOP / grid.FEATURE_RATE:.4f} s)")
    if not 0 <= cfg.threshold_percentile <= 100:
        bad("threshold_percentile", "must be between 0 and 100")
    if cfg.threshold is not None and not 0 <= cfg.threshold <= 1:
        bad("threshold", "must be between 0 and 1 (scores are confidences)")
    if cfg.nms_window < 0:
        bad("nms_window", "must not be negative")
    if cfg.order not in ORDERS:
        bad("order", f"must be {' or '.join(ORDERS)}")
    for key in ("top_n", "batch_size", "queue_size", "separator_batch", "hls_fragments"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            bad(key, "must be at least 1")
    if cfg.max_duration_sec is not None and cfg.max_duration_sec <= 0:
        bad("max_duration_sec", "must be positive (or null for no limit)")
    if cfg.shard_minutes is not None and cfg.shard_minutes * 60 < cfg.window_sec:
        bad("shard_minutes", "must be at least one window long")
    if cfg.rescore_cache_mb < 0:
        bad("rescore_cache_mb", "must be 0 or more")
    if cfg.progress_every_sec <= 0:
        bad("progress_every_sec", "must be positive")
    if not 0 < cfg.chunk_sec <= 600:
        bad("chunk_sec", "must be above 0 and at most 600")
    if cfg.audio_stream is not None and cfg.audio_stream < 0:
        bad("audio_stream", "must be 0 or more (0 is the first audio stream)")
    _check_tracks(cfg)
    return cfg


def _check_tracks(cfg: Config) -> None:
    if cfg.tracks not in (None, "auto"):
        raise HighlightSenseError(f"config: 'tracks' = {cfg.tracks!r} must be auto (or unset)")
    given = [t for t in (cfg.voice_track, cfg.game_track) if t is not None]
    if given and cfg.tracks == "auto":
        raise HighlightSenseError("--tracks auto picks the voice and game tracks itself; "
                                  "give it or --voice-track and --game-track, not both")
    if len(given) == 1:
        raise HighlightSenseError("give both --voice-track and --game-track (or --tracks auto)")
    if given:
        shared = set(track_sum(cfg.voice_track)) & set(track_sum(cfg.game_track))
        if shared:
            raise HighlightSenseError(
                f"audio stream {min(shared)} is given as both the voice and the game track; "
                f"give each its own stream")


def apply(cfg: Config, values: Dict[str, Any], source: str) -> Config:
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise HighlightSenseError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_TYPES))})")
    return replace(cfg, **{k: _coerce(k, v, source) for k, v in values.items()})


def read_yaml(path: Path) -> Dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise HighlightSenseError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where else ""
        raise HighlightSenseError(f"config {path} is not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HighlightSenseError(f"config {path} must be a mapping of key: value")
    return data


def resolve_preset(name_or_path: str) -> Path:
    """A file path, or the name of a packaged preset (configs/NAME.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise HighlightSenseError(f"no config file {name_or_path} (presets: {known})")


def load_config(config_file: Optional[str] = None,
                overrides: Optional[Dict[str, Any]] = None,
                beneath: Optional[Dict[str, Any]] = None) -> Config:
    """Config's defaults, then the default preset (which overrides nothing unless a user edits
    it), then `beneath` (what `select` takes from the folder's last run), then `config_file` (a
    path or a preset name), then `overrides` (None: not given)."""
    cfg = apply(Config(), read_yaml(PRESETS / "default.yaml"), "configs/default.yaml")
    if beneath:
        cfg = apply(cfg, beneath, "the folder's highlights.json")
    if config_file:
        path = resolve_preset(config_file)
        cfg = apply(cfg, read_yaml(path), str(path))
    if overrides:
        cfg = apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "flags")
    return _check(cfg)


def given_keys(config_file: Optional[str] = None,
               overrides: Optional[Dict[str, Any]] = None) -> set:
    """The keys the user set for this command: in `config_file` or by a flag (not None)."""
    given = {k for k, v in (overrides or {}).items() if v is not None}
    if config_file:
        given |= set(read_yaml(resolve_preset(config_file)))
    return given


def checked(cfg: Config) -> Config:
    """`cfg` with every value checked as load_config checks them (one line for the first bad
    one): for a Config changed in code, e.g. by replace()."""
    return _check(cfg)
