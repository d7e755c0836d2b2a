"""Chunk operators, one module each: decode, features, windows, score, select, sinks, clips."""
