"""The progress line: position / duration, x realtime, ETA, the busiest stage."""
import io

from highlightsense.engine.pipeline import PipelineMetrics, StageMetrics
from highlightsense.engine.progress import Progress


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
