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


# ---- defaults are set in one place: Config ------------------------------------------------------

def test_the_default_preset_overrides_nothing():
    from highlightsense.engine.config import PRESETS, Config, read_yaml

    assert read_yaml(PRESETS / "default.yaml") == {}
    assert load_config() == Config()
    assert load_config("default") == Config()


def test_the_default_preset_lists_every_key_at_configs_default():
    """It lists the keys commented out, to copy from: each line shows Config's default."""
    import re
    from dataclasses import fields

    import yaml

    from highlightsense.engine.config import PRESETS, Config

    listed = {}
    for line in (PRESETS / "default.yaml").read_text().splitlines():
        m = re.match(r"# ([a-z_]+): (\S+)", line)
        if m:
            listed[m[1]] = yaml.safe_load(m[2])
    defaults = {f.name: f.default for f in fields(Config)}
    assert listed == defaults


def test_other_presets_set_only_what_differs_from_config():
    from highlightsense.engine.config import PRESETS, Config, read_yaml

    presets = sorted(p for p in PRESETS.glob("*.yaml") if p.stem != "default")
    assert presets  # demo.yaml at least
    for path in presets:
        values = read_yaml(path)
        assert values, path
        for key, value in values.items():
            assert value != getattr(Config(), key), f"{path.name} restates {key}'s default"


def test_default_of_formats_configs_default():
    from highlightsense.engine.config import default_of
    from highlightsense.engine.timecode import hms

    assert [default_of(k) for k in ("top_n", "threshold_percentile", "nms_window",
                                    "separator", "threshold")] == ["20", "99", "10", "htdemucs",
                                                                   "None"]
    assert default_of("max_duration_sec", hms) == "24:00:00"
    with pytest.raises(KeyError):
        default_of("no_such_key")
