"""Times as HH:MM:SS, the one formatter for stream times in tables, events and log lines.

(The progress bar's `engine.progress.clock` is another format on purpose: M:SS, hours only when
there are some.)
"""


def hms(seconds: float) -> str:
    """HH:MM:SS, truncated to the whole second (the seed's timestamps); hours grow past 99
    ("100:00:00"); a negative time reads 00:00:00."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
