"""Sinks: where the results go. The tables and the summary (tables), scores.png (plot), clips
cut from a file (clips) or from a URL (remote_clips), and live events (events)."""
