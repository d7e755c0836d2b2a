"""Times as HH:MM:SS, the one formatter for stream times in tables, events and log lines.

(The progress bar's `engine.progress.clock` is another format on purpose: M:SS, hours only when
there are some.)
"""


def hms(seconds: float) -> str:
    """HH:MM:SS, truncated to the whole second (the seed's timestamps); hours grow past 99
    ("100:00:00"); a negative time reads 00:00:00."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def in_name(seconds: float) -> str:
    """A time for a file name, which sorts and reads without colons: 0h12m03s, 1h02m03s."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


def plural(count: int, word: str) -> str:
    """'1 window', '3 windows'."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
