"""URL inputs: yt-dlp's generic extractor resolves the local server's URLs; `detect URL` streams
them (nothing downloaded first) and cuts clips from only the segments or bytes they need."""
import csv
import json

import numpy as np
import pytest

from highlightsense.benchmarks.hls_server import HlsMedia, HlsServer
from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.cli import main
from highlightsense.engine.config import load_config
from highlightsense.engine.passes import build_scorer, run_pipeline
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.decode import AudioDecoder
from highlightsense.operators.sources.fetch import FetchPolicy, HttpFile
from highlightsense.operators.sources.resolve import is_url, open_audio, resolve

MOMENTS = [(30.0, 40.0), (70.0, 78.0)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """100 s of synthetic stream with a small video: as .ts (cut into 4-s HLS segments) and as
    .mp4 (a direct file, its index at the end: PyAV must seek)."""
    folder = tmp_path_factory.mktemp("resolve")
    vod = SyntheticVod(100, seed=4, moments=MOMENTS, music=[], bangs=[])
    ts = write_media(folder / "vod.ts", vod.blocks(), video=True, fps=10, gop=20)
    mp4 = write_media(folder / "vod.mp4", vod.blocks(), video=True, fps=10, gop=20)
    return ts, HlsMedia.from_file(ts, 4.0), mp4


@pytest.fixture
def server():
    with HlsServer() as s:
        yield s


def decode(source) -> np.ndarray:
    return np.concatenate([c.samples for c in source], axis=1)


def scores(out_dir):
    with open(out_dir / "raw_window_scores.csv", newline="") as f:
        return [(r["start_sec"], r["confidence"]) for r in csv.DictReader(f)]


def test_ytdlp_resolves_the_master_to_audio_only_and_best_video(files, server):
    _, hls, _ = files
    urls = server.add_vod("vod", hls)
    r = resolve(urls["master"])
    assert r.audio.url == urls["audio"] and r.audio.protocol == "hls"
    assert r.audio.format_id == "audio_only"  # as Twitch's Audio_Only: no video downloaded
    assert r.video.url == urls["video"] and r.video.protocol == "hls"
    assert not r.is_live
    assert dict(r.audio.headers).get("User-Agent")  # yt-dlp's headers travel with our requests
    live = server.add_live("live", hls, speed=1.0, initial=2)
    assert resolve(live["master"]).is_live


def test_ytdlp_resolves_media_playlists_and_direct_files(files, server):
    ts, hls, mp4 = files
    urls = server.add_vod("vod", hls)
    assert resolve(urls["audio"]).audio.protocol == "hls"
    direct = resolve(server.add_file("/files/vod.mp4", mp4.read_bytes()))
    assert direct.audio.protocol == "http" and direct.audio.url.endswith("/files/vod.mp4")
    assert direct.video.url == direct.audio.url


def test_a_bad_url_is_one_line(server):
    with pytest.raises(HighlightSenseError) as e:
        resolve(server.url("/no/such/video"))
    assert "cannot open" in str(e.value) and "404" in str(e.value) and "\n" not in str(e.value)
    assert is_url("https://www.twitch.tv/videos/1") and not is_url("/tmp/x.mp4")


def test_direct_file_url_decodes_as_it_streams_resuming_dropped_connections(files, server):
    _, _, mp4 = files
    data = mp4.read_bytes()
    url = server.add_file("/files/vod.mp4", data)
    server.faults["/files/vod.mp4"] = [None, "drop", "drop", None, "500"]
    got = decode(open_audio(url, policy=FetchPolicy(backoff_sec=0.05)))
    assert np.array_equal(got, decode(AudioDecoder(str(mp4))))
    ranges = [r.range for r in server.requests_for("/files/vod.mp4")]
    assert any(r and r != "bytes=0-" for r in ranges)  # it sought (the index is at the end)
    # Bytes read in all: the file once, give or take what seeks and drops cost.
    assert len(ranges) < 12


def test_http_file_gives_a_clear_error_after_its_retries(server):
    server.add_file("/files/x.mp4", b"x" * 1000)
    server.faults["/files/x.mp4"] = ["500"] * 10
    with pytest.raises(HighlightSenseError,
                       match=r"could not read .*x\.mp4 after 2 tries: HTTP 500"):
        HttpFile(server.url("/files/x.mp4"), FetchPolicy(tries=2, backoff_sec=0.01))


def test_detect_url_equals_detect_file_and_fetches_only_the_clips_segments(files, server,
                                                                           tmp_path, capsys):
    ts, hls, _ = files
    urls = server.add_vod("vod", hls)
    flags = ["--threshold", "0.3", "-q"]
    assert main(["detect", str(ts), "--out", str(tmp_path / "file"), "--no-clips"] + flags) == 0
    assert main(["detect", urls["master"], "--out", str(tmp_path / "url"), "--top-n", "1"]
                + flags) == 0
    out = capsys.readouterr().out
    assert "at or above the threshold 0.3000" in out
    assert scores(tmp_path / "url") == scores(tmp_path / "file")

    summary = json.loads((tmp_path / "url" / "highlights.json").read_text())
    assert summary["source"] == urls["master"] and summary["settings"]["threshold"] == 0.3
    highlights = summary["highlights"]
    assert len(highlights) == 1 and summary["windows_above_threshold"] >= 2
    for h in highlights:
        assert h["clip_path"].endswith(".mp4") and h["cut"] == "copy"
        assert h["start_sec"] - 2.05 <= h["clip_start_sec"] <= h["start_sec"]
    # The audio-only rendition was read once; of the video, only segments around the clips.
    audio = [r.path for r in server.requests if r.path.startswith("/vod/a/")]
    video = {r.path for r in server.requests if r.path.startswith("/vod/v/")}
    assert len(audio) == len(set(audio)) == len(hls.audio)
    assert 0 < len(video) <= (30 + 2 * 4) / 4 + 2 < len(hls.video)  # a segment of margin

    # `select` cuts the clips again from the URL, from the saved timeline.
    before = len(server.requests)
    assert main(["select", str(tmp_path / "url"), "--threshold", "0.3", "--top-n", "1",
                 "-q"]) == 0
    again = [r.path for r in server.requests[before:]]
    assert again and not any(p.startswith("/vod/a/") for p in again)
    assert len(list((tmp_path / "url" / "clips").iterdir())) == 1


def test_detect_direct_file_url_cuts_clips_with_range_requests(files, server, tmp_path):
    _, _, mp4 = files
    url = server.add_file("/files/vod.mp4", mp4.read_bytes())
    out = tmp_path / "out"
    assert main(["detect", url, "--out", str(out), "--threshold", "0.3", "--top-n", "2",
                 "-q"]) == 0
    clips = sorted((out / "clips").iterdir())
    assert len(clips) == 2 and all(c.suffix == ".mp4" for c in clips)
    summary = json.loads((out / "highlights.json").read_text())
    assert summary["has_video"] is True and summary["source"] == url


def test_unreachable_segments_stop_the_pipeline_with_one_line(files, server):
    _, hls, _ = files
    urls = server.add_vod("vod", hls)
    server.faults["/vod/a/3.ts"] = ["404"] * 100
    cfg = load_config()
    scorer = build_scorer(cfg)
    source = open_audio(urls["master"], policy=FetchPolicy(tries=2, backoff_sec=0.05))
    with pytest.raises(HighlightSenseError) as e:
        run_pipeline(source, scorer.feature_stages(cfg), scorer, cfg)
    message = str(e.value)
    assert message.startswith("decode: could not fetch HLS segment 3") and "404" in message
    assert "\n" not in message
