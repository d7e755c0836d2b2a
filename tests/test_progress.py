"""The progress line: position / duration, x realtime, ETA, the busiest stage."""
import io
import sys
import types

from highlightsense.engine.pipeline import PipelineMetrics, StageMetrics
from highlightsense.engine.progress import TERMINAL, TEXT, WIDGET, Progress, progress_display


def test_progress_line_and_final_line():
    m = PipelineMetrics([StageMetrics("decode", busy_sec=1.0), StageMetrics("score", busy_sec=3.0)])
    m.position_sec = 600.0
    m.started -= 4.0  # four seconds of wall time so far
    out = io.StringIO()
    progress = Progress(3600.0, stream=out, every_sec=0.0)
    line = progress.line(m)
    assert line.startswith("10:00 / 1:00:00 (17%)")
    speed = float(line.split("  ")[1].split("x")[0])
    assert 140 < speed <= 150.01
    assert "ETA 0:20" in line and "busiest: score 75%" in line
    progress(m)
    m.finished = m.started + 4.0
    progress(m)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "ETA" not in lines[-1]


def fake_ipython(monkeypatch, shell):
    """IPython as sys.modules shows it: `shell` is what get_ipython() returns."""
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)


def test_display_outside_a_kernel_is_the_terminal_and_imports_no_ipython(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert progress_display() == TERMINAL
    assert Progress(60.0).display == TERMINAL
    assert "IPython" not in sys.modules  # the CLI pays nothing for the notebook path
    fake_ipython(monkeypatch, None)  # IPython imported, no shell running
    assert progress_display() == TERMINAL
    fake_ipython(monkeypatch, types.SimpleNamespace())  # the terminal IPython: no kernel
    assert progress_display() == TERMINAL


def test_display_in_a_kernel_is_the_notebook_bar_or_its_text_fallback(monkeypatch):
    import tqdm.notebook  # before IPython is faked: it imports IPython.display if it can

    fake_ipython(monkeypatch, types.SimpleNamespace(kernel=object()))  # Jupyter's, Colab's shell
    monkeypatch.setattr(tqdm.notebook, "IProgress", object())  # ipywidgets there
    assert progress_display() == WIDGET
    assert Progress(60.0).display == WIDGET
    assert Progress(60.0, stream=io.StringIO()).display == TERMINAL  # a stream given: as asked
    monkeypatch.setattr(tqdm.notebook, "IProgress", None)  # no ipywidgets: tqdm cannot draw
    assert progress_display() == TEXT


def test_a_default_detect_knows_the_file_s_duration_for_its_progress(tmp_path):
    """The default settings hold the input to --max-duration (a wrapper source): the duration
    still reaches the progress line, so a terminal shows it, the percentage and the ETA."""
    import numpy as np

    from highlightsense.benchmarks.media import write_media
    from highlightsense.engine.config import load_config
    from highlightsense.engine.passes import open_source
    from highlightsense.operators.sources.wrappers import Limited

    path = write_media(tmp_path / "a.wav", [np.zeros((2, 44100 * 60), np.float32)])
    source = open_source(str(path), load_config())
    try:
        assert isinstance(source, Limited)  # the default: --max-duration 24:00:00
        m = PipelineMetrics([StageMetrics("decode", busy_sec=1.0)], position_sec=30.0)
        m.started -= 2.0
        line = Progress(source.info.duration_sec, stream=io.StringIO()).line(m)
        assert line.startswith("0:30 / 1:00 (50%)") and "ETA 0:02" in line, line
    finally:
        source.close()
