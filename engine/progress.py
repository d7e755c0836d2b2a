"""Progress on long work: position / duration, x realtime, ETA. On a terminal one line redrawn in
place; otherwise (logs, CI) a line every `every_sec` seconds."""
import sys
import time
from typing import Optional

from highlightsense.engine.pipeline import PipelineMetrics


def clock(sec: float) -> str:
    sec = max(0, int(sec))
    h, m, s = sec // 3600, sec % 3600 // 60, sec % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, duration_sec: Optional[float], stream=None, every_sec: float = 10.0):
        self.duration = duration_sec if duration_sec and duration_sec > 0 else None
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = 0.5 if self.tty else every_sec
        self._last = time.monotonic()  # the first line after `every` seconds, not at 0:00
        self._shown = False

    def line(self, m: PipelineMetrics) -> str:
        pos, wall = m.position_sec, m.wall_sec
        speed = (pos - m.start_sec) / wall if wall > 0 else 0.0
        text = f"{clock(pos)}"
        if self.duration:
            pct = min(100.0, 100.0 * pos / self.duration)
            text += f" / {clock(self.duration)} ({pct:.0f}%)"
        text += f"  {speed:.1f}x realtime"
        if self.duration and speed > 0 and m.finished is None:
            text += f"  ETA {clock((self.duration - pos) / speed)}"
        busiest = max(m.stages, key=lambda s: s.busy_sec)
        if wall > 0 and busiest.busy_sec > 0:  # the stage that sets the pace
            text += f"  busiest: {busiest.name} {100 * busiest.busy_sec / wall:.0f}%"
        return text

    def __call__(self, m: PipelineMetrics) -> None:
        now = time.monotonic()
        final = m.finished is not None
        if not final and now - self._last < self.every:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\033[K" + self.line(m) + ("\n" if final else ""))
        elif not final or self._shown:
            self.stream.write(self.line(m) + "\n")
        self._shown = True
        self.stream.flush()
