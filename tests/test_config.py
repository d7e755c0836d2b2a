"""Configuration: the seed's defaults, file and flag layering, refusals by name."""
import pytest

from highlightsense.engine.config import load_config
from highlightsense.engine.errors import HighlightSenseError


def test_defaults_are_the_seeds():
    cfg = load_config()
    assert (cfg.window_sec, cfg.stride_sec, cfg.threshold_percentile, cfg.nms_window,
            cfg.top_n) == (30.0, 5.0, 99.0, 10.0, 20)
    assert (cfg.window_frames, cfg.stride_frames) == (1292, 215)


def test_file_then_flags(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("top_n: 5\nnms_window: 20\n")
    cfg = load_config(str(f), {"top_n": 3, "window_sec": None})
    assert (cfg.top_n, cfg.nms_window, cfg.window_sec) == (3, 20.0, 30.0)


def test_preset_by_name():
    assert load_config("default").top_n == 20


@pytest.mark.parametrize("text, words", [
    ("windw_sec: 10\n", ["unknown key windw_sec"]),
    ("top_n: many\n", ["'top_n' must be a whole number"]),
    ("window_sec: 60\n", ["window_sec", "under 60 s"]),
    ("threshold_percentile: 120\n", ["threshold_percentile", "between 0 and 100"]),
    ("clips: 3\n", ["'clips' must be true or false"]),
    ("[1, 2]\n", ["must be a mapping"]),
    ("top_n: [\n", ["not valid YAML"]),
])
def test_refused_by_name(tmp_path, text, words):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(HighlightSenseError) as err:
        load_config(str(f))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file():
    with pytest.raises(HighlightSenseError, match="no config file nope.yaml"):
        load_config("nope.yaml")
