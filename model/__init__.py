"""Scorers: the CRNN and its checkpoint loading, and the weights-free loudness scorer."""
