"""Sources: where the audio comes from. A media file (decode), a URL resolved with yt-dlp
(resolve), HLS playlists followed as they grow (hls) and HTTP that survives bad networks
(fetch). Each yields AudioChunks at 44.1 kHz stereo and describes itself with one SourceInfo."""
