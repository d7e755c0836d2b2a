"""HLS reading from a local server (benchmarks/hls_server.py) serving segments cut with PyAV from
generated media: the audio equals the file's, sample for sample, whatever the server does."""
import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from highlightsense.benchmarks.hls_server import HlsMedia, HlsServer
from highlightsense.benchmarks.media import beeps, find_beeps, tone, write_media
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.decode import AudioDecoder
from highlightsense.operators.sources.fetch import FetchPolicy
from highlightsense.operators.sources.hls_playlist import (MasterPlaylist, MediaPlaylist,
                                                           parse_playlist)
from highlightsense.operators.sources.hls_reader import HlsReader
from highlightsense.operators.sources.hls_source import (BroadcastTimes, HlsAudioSource,
                                                         SegmentTimes)

RATE = 44100
BEEPS = [1.0, 5.5, 13.0, 18.2]
FAST = FetchPolicy(backoff_sec=0.05)  # retries without the real backoff's waits


def decode_file(path) -> np.ndarray:
    return np.concatenate([c.samples for c in AudioDecoder(str(path))], axis=1)


def decode_hls(url, **kwargs):
    source = HlsAudioSource(url, **kwargs)
    chunks = list(source)
    expected = 0
    for c in chunks:  # contiguous stream time
        assert c.start == expected and c.rate == RATE
        expected = c.end
    return np.concatenate([c.samples for c in chunks], axis=1), source


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """20 s of beeps with a small video (keyframes every 2 s), as .ts and as 2-s HLS segments."""
    path = write_media(tmp_path_factory.mktemp("hls") / "src.ts", beeps(20.0, BEEPS),
                       video=True, fps=10, gop=20)
    return path, HlsMedia.from_file(path, 2.0), decode_file(path)


@pytest.fixture
def server():
    with HlsServer() as s:
        yield s


@pytest.mark.parametrize("playlist", ["master", "audio", "video"])
def test_vod_audio_equals_the_file_it_was_made_from(media, server, playlist):
    _, hls, reference = media
    urls = server.add_vod("vod", hls)
    samples, source = decode_hls(urls[playlist])
    assert np.array_equal(samples, reference)
    assert source.info.duration_sec == pytest.approx(20.0, abs=0.1)
    assert (len(source.info.timeline) == 1
            and source.info.timeline[0].origin_sec == pytest.approx(1.4))
    fetched = {r.path.split("/")[2] for r in server.requests if r.path.endswith(".ts")}
    # The master's audio-only rendition is what gets downloaded, not the video.
    assert fetched == ({"v"} if playlist == "video" else {"a"})


@pytest.mark.parametrize("fault", ["drop", "404", "500", "stall"])
def test_misbehaving_server_loses_and_repeats_nothing(media, server, fault):
    _, hls, reference = media
    urls = server.add_vod("vod", hls)
    for i in (2, 5, 8):
        server.faults[f"/vod/a/{i}.ts"] = [fault]
    # The watchdog, not the socket timeout, must catch the stall.
    policy = FetchPolicy(backoff_sec=0.05, timeout_sec=30, stall_sec=0.3)
    began = time.monotonic()
    samples, _ = decode_hls(urls["audio"], policy=policy)
    assert np.array_equal(samples, reference)
    assert time.monotonic() - began < 10
    for i in (2, 5, 8):
        first, second = server.requests_for(f"/vod/a/{i}.ts")
        if fault in ("drop", "stall"):  # resumed from the byte where the transfer stopped
            assert second.range == f"bytes={len(hls.audio[i]) // 2}-" and second.status == 206
        else:
            assert first.status == int(fault) and second.status == 200


def test_throttled_connections_still_deliver_everything(media, server):
    _, hls, reference = media
    urls = server.add_vod("vod", hls)
    server.throttle_bps = 400 * 1024
    began = time.monotonic()
    samples, _ = decode_hls(urls["audio"], parallel=4)
    took = time.monotonic() - began
    assert np.array_equal(samples, reference)
    total = sum(len(a) for a in hls.audio)
    assert took > total / (400 * 1024) / 4 * 0.8  # the throttle did hold it back


def test_segments_download_several_at_once_and_decode_in_order(media, server):
    _, hls, reference = media
    urls = server.add_vod("vod", hls)
    server.throttle_bps = 100 * 1024  # ~0.3 s a segment: long enough to overlap
    samples, _ = decode_hls(urls["audio"], parallel=4)
    assert np.array_equal(samples, reference)
    starts = [server.requests_for(f"/vod/a/{i}.ts")[0].at for i in range(4)]
    assert max(starts) - min(starts) < 0.2  # the first four were asked for together
    server.requests.clear()
    reader = HlsReader(urls["audio"], parallel=1)
    fragments = reader.fragments()
    for _, fragment in zip(range(4), fragments):
        fragment.download.result()
    fragments.close()
    sequential = [server.requests_for(f"/vod/a/{i}.ts")[0].at for i in range(4)]
    assert min(b - a for a, b in zip(sequential, sequential[1:])) > 0.15  # one after another


def test_a_segment_that_keeps_failing_is_one_clear_line(media, server):
    _, hls, _ = media
    urls = server.add_vod("vod", hls)
    server.faults["/vod/a/4.ts"] = ["404"] * 10
    with pytest.raises(HighlightSenseError) as e:
        decode_hls(urls["audio"], policy=FetchPolicy(tries=3, backoff_sec=0.05))
    message = str(e.value)
    assert "HLS segment 4" in message and "after 3 tries" in message and "404" in message
    assert "\n" not in message


def test_a_stall_that_does_not_end_fails_after_the_retries(media, server):
    _, hls, _ = media
    urls = server.add_vod("vod", hls)
    server.faults["/vod/a/1.ts"] = ["stall"] * 10
    began = time.monotonic()
    with pytest.raises(HighlightSenseError, match=r"HLS segment 1 .* after 2 tries: stalled"):
        decode_hls(urls["audio"],
                   policy=FetchPolicy(tries=2, backoff_sec=0.05, timeout_sec=60, stall_sec=0.3))
    assert time.monotonic() - began < 5  # the watchdog, not the 60-s socket timeout


def test_discontinuity_keeps_stream_time_continuous(tmp_path, server):
    # Two recordings, each with timestamps from 1.4 s: the second restarts the clock.
    a = write_media(tmp_path / "a.ts", beeps(9.0, [1.0, 6.0]))
    b = write_media(tmp_path / "b.ts", beeps(7.0, [2.0, 5.0]))
    url = server.add_joined("joined", [HlsMedia.from_file(a, 2.0), HlsMedia.from_file(b, 2.0)])
    samples, source = decode_hls(url)
    first, second = decode_file(a), decode_file(b)
    assert np.array_equal(samples, np.concatenate([first, second], axis=1))
    length = first.shape[1] / RATE
    found = find_beeps(samples)
    assert found == pytest.approx([1.0, 6.0, length + 2.0, length + 5.0], abs=0.03)
    assert [(e.discontinuity, e.origin_sec) for e in source.info.timeline] == [(0, 1.4), (1, 1.4)]
    assert source.info.timeline[1].stream_sec == pytest.approx(length)


@pytest.mark.parametrize("style", ["daterange", "cue", "title"])
def test_ads_marked_in_the_playlist_are_skipped_with_a_log_line(tmp_path, server, caplog, style):
    a = write_media(tmp_path / "a.ts", beeps(9.0, [1.0, 6.0]))
    ad = write_media(tmp_path / "ad.ts", tone(5.0, 880.0))  # loud: it would show
    b = write_media(tmp_path / "b.ts", beeps(7.0, [2.0, 5.0]))
    parts = [HlsMedia.from_file(p, 2.0) for p in (a, ad, b)]
    url = server.add_joined("ads", parts, ad_parts=(1,), ad_style=style)
    with caplog.at_level(logging.INFO, logger="highlightsense"):
        samples, source = decode_hls(url)
    assert np.array_equal(samples, np.concatenate([decode_file(a), decode_file(b)], axis=1))
    assert not any(r.path.startswith("/ads/p1/") for r in server.requests)  # never fetched
    assert [r.getMessage() for r in caplog.records if "ad break" in r.getMessage()] == [
        "skipped an ad break marked in the playlist: 3 segments (5.0 s) from segment 5, at "
        "0:08 of the stream"]
    content = parts[0].durations + parts[2].durations
    assert source.info.duration_sec == pytest.approx(sum(content))  # the ad's time left out


def test_live_playlist_is_followed_until_it_ends(media, server, caplog):
    _, hls, reference = media
    # A sliding window of 3 segments on a clock 10 times real time.
    urls = server.add_live("live", hls, speed=10, initial=1, window=3)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="highlightsense"):
        samples, source = decode_hls(urls["audio"], poll_sec=0.05)
    assert np.array_equal(samples, reference)
    assert 1.5 < time.monotonic() - began < 8  # it waited for the segments to appear
    assert (source.info.duration_sec is None
            and source.info.live_edge_sec == pytest.approx(20.0, abs=0.1))
    assert not caplog.records  # nothing missed
    reloads = server.requests_for("/live/audio.m3u8")
    assert len(reloads) > 10


def test_live_edge_start_begins_three_target_durations_back(media, server):
    _, hls, reference = media
    urls = server.add_live("live", hls, speed=10, initial=6, window=None)
    samples, source = decode_hls(urls["audio"], poll_sec=0.05, start="live_edge")
    assert source.info.timeline[0].sequence == 3  # 6 listed, 2-s segments, target 2 s: the last 3
    assert samples.shape[1] < reference.shape[1]


def test_live_broadcast_times_follow_each_segment_across_an_ad_break(media, server):
    """A sliding live window that says where each segment is in the broadcast (ELAPSED-SECS,
    of its first segment at each reload) and on the clock (PROGRAM-DATE-TIME); joined at the
    live edge, then an ad break (segments 4 and 5, 8-12 s of the media): the beeps heard, mapped
    through the source's BroadcastTimes, land where the media has them in the broadcast."""
    _, hls, _ = media
    elapsed, date = 7200.0, datetime(2026, 3, 1, 18, 0, tzinfo=timezone.utc)  # of segment 0
    urls = server.add_live("live", hls, speed=10, initial=4, window=4, ads=(4, 5),
                           elapsed_sec=elapsed, start_date=date)
    samples, source = decode_hls(urls["audio"], poll_sec=0.05, start="live_edge")
    times = source.info.broadcast_times
    starts = np.concatenate([[0.0], np.cumsum(hls.durations)])
    # Joined 6 s back from the 4 listed (segment 1); the ads never taken.
    assert [e.sequence for e in times.entries] == [1, 2, 3, 6, 7, 8, 9]
    for e in times.entries:
        assert e.broadcast_sec == pytest.approx(elapsed + starts[e.sequence], abs=1e-6)
        assert e.utc == date + timedelta(seconds=float(starts[e.sequence]))
    ad_sec = starts[6] - starts[4]
    assert times.entries[3].stream_sec == pytest.approx(starts[4] - starts[1], abs=0.03)
    heard = find_beeps(samples)
    assert len(heard) == 3  # 5.5 before the ad, 13.0 and 18.2 after it
    for at, beep in zip(heard, BEEPS[1:]):
        broadcast, utc = times.at(at)
        assert broadcast == pytest.approx(elapsed + beep, abs=0.05)
        assert (utc - date).total_seconds() == pytest.approx(beep, abs=0.05)
    # A span over the ad: longer in the broadcast than in stream time, by the ad (to within
    # what the decoded audio and the listed durations differ by: an AAC frame or so).
    (b0, _), (b1, _) = times.at(heard[0]), times.at(heard[1], end=True)
    assert b1 - b0 == pytest.approx(heard[1] - heard[0] + ad_sec, abs=0.03)


def test_broadcast_times_map_through_the_segment_holding_each_moment():
    date = datetime(2026, 3, 1, 18, 0, tzinfo=timezone.utc)
    times = BroadcastTimes()
    # Segments 10-12 at broadcast 100-106 s, an ad (13, 14) skipped, then 15 at 110 s.
    for k, (stream, broadcast) in enumerate([(0, 100), (2, 102), (4, 104), (6, 110)]):
        times.add(SegmentTimes(stream, 2.0, broadcast,
                               date + timedelta(seconds=broadcast), [10, 11, 12, 15][k]))
    assert times.at(3.0) == (101.0 + 2, date + timedelta(seconds=103))
    assert times.at(6.0)[0] == 110.0  # a start on the boundary: the segment after the ad
    assert times.at(6.0, end=True)[0] == 106.0  # an end on it: the segment before
    assert times.at(7.5, end=True)[0] == 111.5
    assert times.at(-1.0) == (None, None)
    # A playlist without the tags: both unknown, stream time mapping nothing.
    silent = BroadcastTimes()
    silent.add(SegmentTimes(0.0, 2.0, None, None, 0))
    assert silent.at(1.0) == (None, None)
    # Bounded: what ends more than keep_sec behind the newest is dropped.
    kept = BroadcastTimes(keep_sec=10.0)
    for k in range(100):
        kept.add(SegmentTimes(2.0 * k, 2.0, 2.0 * k, None, k))
    assert [e.stream_sec for e in kept.entries] == [190.0, 192.0, 194.0, 196.0, 198.0]
    assert kept.at(189.0) == (None, None) and kept.at(190.5)[0] == 190.5


def test_twitch_elapsed_secs_gives_each_segment_its_broadcast_time():
    text = "\n".join([
        "#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:500",
        "#EXT-X-TWITCH-ELAPSED-SECS:1000.500", "#EXT-X-TWITCH-TOTAL-SECS:1006.500",
        "#EXT-X-PROGRAM-DATE-TIME:2026-03-01T19:00:00.000+01:00",
        "#EXTINF:2.000,live", "a.ts", "#EXTINF:2.000,Amazon|1", "ad.ts",
        "#EXTINF:2.000,live", "b.ts"])
    playlist = parse_playlist(text, "http://h/live.m3u8")
    assert playlist.elapsed_sec == 1000.5
    # The ad keeps its place in the broadcast: the segment after it is 4 s after the first.
    assert [(s.broadcast_sec, s.ad) for s in playlist.segments] == [
        (1000.5, False), (1002.5, True), (1004.5, False)]
    utc = SegmentTimes.of(playlist.segments[2], 0.0).utc  # in UTC, whatever the tag's offset
    assert utc == datetime(2026, 3, 1, 18, 0, 4, tzinfo=timezone.utc)
    assert utc.utcoffset() == timedelta(0)
    bare = parse_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n", "http://h/x")
    assert bare.elapsed_sec is None
    assert SegmentTimes.of(bare.segments[0], 0.0) == SegmentTimes(0.0, 2.0, None, None, 0)


def test_close_from_another_thread_ends_a_waiting_read(media, server):
    _, hls, _ = media
    urls = server.add_live("live", hls, speed=0.01, initial=2)  # next segment: minutes away
    source = HlsAudioSource(urls["audio"], poll_sec=0.05)
    got = []
    reader = threading.Thread(target=lambda: got.extend(source), daemon=True)
    reader.start()
    time.sleep(1.0)
    began = time.monotonic()
    source.close()
    reader.join(3)
    assert not reader.is_alive() and time.monotonic() - began < 1.0
    assert got  # the first segments had come through


def test_reader_hands_fragments_on_in_playlist_order(media, server):
    _, hls, _ = media
    urls = server.add_vod("vod", hls)
    # Segment 0 is slow (it fails once), the others are quick: the order still holds.
    server.faults["/vod/a/0.ts"] = ["500"]
    reader = HlsReader(urls["audio"], FAST, parallel=8)
    seen = []
    for fragment in reader.fragments():
        seen.append(fragment.segment.sequence)
        assert fragment.download.result() == hls.audio[fragment.segment.sequence]
    assert seen == list(range(len(hls.audio)))


def test_master_playlist_choices():
    master = parse_playlist("\n".join([
        "#EXTM3U",
        '#EXT-X-STREAM-INF:BANDWIDTH=6000000,RESOLUTION=1920x1080,CODECS="avc1.64002A,mp4a.40.2"',
        "1080p/index.m3u8",
        '#EXT-X-STREAM-INF:BANDWIDTH=900000,RESOLUTION=640x360,CODECS="avc1.4D401E,mp4a.40.2"',
        "360p/index.m3u8",
        '#EXT-X-STREAM-INF:BANDWIDTH=160000,CODECS="mp4a.40.2"',
        "audio/index.m3u8"]), "https://cdn.example/x/master.m3u8")
    assert isinstance(master, MasterPlaylist)
    assert master.audio_uri() == "https://cdn.example/x/audio/index.m3u8"
    assert master.video_uri() == "https://cdn.example/x/1080p/index.m3u8"
    with_renditions = parse_playlist("\n".join([
        "#EXTM3U",
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="English",DEFAULT=YES,URI="en/a.m3u8"',
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="Commentary",URI="cm/a.m3u8"',
        '#EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1280x720,AUDIO="aud"',
        "720p.m3u8"]), "https://cdn.example/m.m3u8")
    assert with_renditions.audio_uri() == "https://cdn.example/en/a.m3u8"


def test_media_playlist_details():
    playlist = parse_playlist("\n".join([
        "#EXTM3U", "#EXT-X-TARGETDURATION:6", "#EXT-X-MEDIA-SEQUENCE:100",
        "#EXT-X-DISCONTINUITY-SEQUENCE:7", '#EXT-X-MAP:URI="init.mp4"',
        "#EXTINF:6.0,", "#EXT-X-BYTERANGE:1000@0", "all.m4s",
        "#EXTINF:6.0,", "#EXT-X-BYTERANGE:500", "all.m4s",
        "#EXT-X-DISCONTINUITY", "#EXTINF:4.5,", "b.m4s"]), "http://h/p/list.m3u8")
    assert isinstance(playlist, MediaPlaylist) and not playlist.ended
    s = playlist.segments
    assert [x.sequence for x in s] == [100, 101, 102]
    assert [x.discontinuity for x in s] == [7, 7, 8]
    assert [x.byterange for x in s] == [(0, 1000), (1000, 500), None]
    assert s[0].init == ("http://h/p/init.mp4", None)
    with pytest.raises(HighlightSenseError, match="encrypted"):
        parse_playlist('#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="k"\n#EXTINF:2,\na.ts\n', "u")
