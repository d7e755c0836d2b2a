"""Sources made of another source: its first samples (a second pass over the start of a file),
or a source held to a maximum length (--max-duration). Each hands on the source's SourceInfo."""
from dataclasses import replace

from highlightsense.engine import grid
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import Source
from highlightsense.engine.progress import clock


class Prefix(Source):
    """The first `samples` samples of a source (a second pass over the start of a file). Its
    info is the source's, with the prefix's duration (for progress)."""

    name = "decode"

    def __init__(self, source: Source, samples: int):
        self.source, self.samples = source, samples
        self.info = replace(source.info, duration_sec=samples / grid.AUDIO_RATE)

    def __iter__(self):
        for chunk in self.source:
            if chunk.start >= self.samples:
                break
            if chunk.end > self.samples:
                chunk = replace(chunk, samples=chunk.samples[..., :self.samples - chunk.start])
            yield chunk

    def close(self) -> None:
        self.source.close()


class Limited(Source):
    """A source that must end within `max_sec` of stream time (--max-duration): a stream that
    runs on past it (a live URL, a file whose header lies) stops the run with an error."""

    name = "decode"

    def __init__(self, source: Source, max_sec: float):
        self.source, self.max_sec = source, max_sec
        self.limit = round(max_sec * grid.AUDIO_RATE)
        self.info = source.info

    def __iter__(self):
        for chunk in self.source:
            if chunk.end > self.limit:
                raise HighlightSenseError(
                    f"the input runs past --max-duration {clock(self.max_sec)}; raise the limit "
                    f"(--max-duration H:MM:SS) or cut the input")
            yield chunk

    def close(self) -> None:
        self.source.close()
