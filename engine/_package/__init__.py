"""HighlightSense: find the highlight moments of long game streams, streaming."""
__version__ = "0.1.0"
