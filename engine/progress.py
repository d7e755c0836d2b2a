"""Progress on long work: position / duration, x realtime, ETA. On a terminal one line redrawn in
place; otherwise (logs, CI) a line every `every_sec` seconds; in a notebook (Jupyter, Colab) a
live bar (tqdm's notebook widget, or where ipywidgets is missing the same line in one output
updated in place). `Progress.line()` is the one text formatter for all three."""
import sys
import time
from typing import Optional

from highlightsense.engine.pipeline import PipelineMetrics

TERMINAL, WIDGET, TEXT = "terminal", "widget", "text"


def clock(sec: float) -> str:
    sec = max(0, int(sec))
    h, m, s = sec // 3600, sec % 3600 // 60, sec % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def in_kernel() -> bool:
    """Whether this runs inside an IPython kernel (Jupyter, Colab), not a terminal IPython nor
    plain Python. IPython is never imported here: a kernel has always imported it already."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # a half-imported or odd IPython: treat as no kernel
        return False
    return getattr(shell, "kernel", None) is not None


def progress_display() -> str:
    """How progress shows here, chosen once per Progress: TERMINAL outside a kernel; in one,
    WIDGET (tqdm.notebook's bar) where ipywidgets can draw it, else TEXT (a display handle)."""
    if not in_kernel():
        return TERMINAL
    try:
        import tqdm.notebook
    except ImportError:
        return TEXT
    return WIDGET if getattr(tqdm.notebook, "IProgress", None) is not None else TEXT


class Progress:
    def __init__(self, duration_sec: Optional[float], stream=None, every_sec: float = 10.0):
        self.duration = duration_sec if duration_sec and duration_sec > 0 else None
        # A stream given by the caller is written to as a terminal; else the place decides.
        self.display = TERMINAL if stream is not None else progress_display()
        self.stream = stream or sys.stderr
        self.tty = self.display == TERMINAL and self.stream.isatty()
        self.every = 0.5 if self.tty or self.display != TERMINAL else every_sec
        self._last = time.monotonic()  # the first line after `every` seconds, not at 0:00
        self._shown = False
        self._bar = None  # the notebook's tqdm bar, or its display handle (TEXT)

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
        if self.display != TERMINAL:
            return self._notebook(m)
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

    def _notebook(self, m: PipelineMetrics) -> None:
        """The bar (or the text) appears at the first call, is redrawn every `every` seconds,
        and is closed by the last (m.finished set)."""
        now = time.monotonic()
        final = m.finished is not None
        if self._shown and not final and now - self._last < self.every:
            return
        self._last, self._shown = now, True
        text = self.line(m)
        if self.display == WIDGET:
            if self._bar is None:
                from tqdm.notebook import tqdm

                self._bar = tqdm(total=self.duration, unit="s", bar_format="{bar} {desc}",
                                 leave=True)
            bar = self._bar
            # Finished whole: a full bar (container durations are not exact); stopped: where it
            # stopped, which close() shows in red.
            if self.duration:
                bar.n = self.duration if final and not m.failed else min(m.position_sec,
                                                                         self.duration)
            else:
                bar.n = m.position_sec
            bar.set_description_str(text, refresh=False)
            bar.refresh()
            if final:
                if m.failed:  # red also where the total is unknown (close() judges by n)
                    bar.disp(bar_style="danger", check_delay=False)
                bar.close()
        else:
            raw = {"text/plain": text}
            if self._bar is None:
                from IPython.display import display

                self._bar = display(raw, raw=True, display_id=True)
            else:
                self._bar.update(raw, raw=True)
