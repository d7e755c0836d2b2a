"""Sources: where the audio comes from. A media file (decode), a URL resolved with yt-dlp
(resolve), HLS playlists parsed (hls_playlist), followed as they grow (hls_reader) and decoded
(hls_source), HTTP that survives bad networks (fetch), and sources made of another (wrappers).
Each yields AudioChunks at 44.1 kHz stereo and describes itself with one SourceInfo."""
