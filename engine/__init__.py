"""The streaming runtime: typed chunks, bounded-queue pipeline, buffers, config and CLI."""
