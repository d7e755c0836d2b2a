"""The data flow, one module per job: sources/ (decode a file, a URL, HLS) -> the chunk operators
here (separate, mel_features or loudness_features, windows, score, select or online_select)
-> sinks/ (tables, plot, clips, events)."""
