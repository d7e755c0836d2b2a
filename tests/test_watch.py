"""`watch` on a live HLS playlist served on 127.0.0.1 by the tests, and its online selection."""
import io
import json
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import numpy as np
import pytest

from highlightsense.benchmarks.hls_server import START_DATE, HlsMedia, HlsServer
from highlightsense.benchmarks.media import read_frame_number, write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine import grid
from highlightsense.engine.chunks import ScoredWindows, Tick
from highlightsense.engine.config import load_config
from highlightsense.engine.detect import detect
from highlightsense.engine.operator import SourceInfo
from highlightsense.engine.pipeline import PipelineMetrics
from highlightsense.engine.watch import WatchOptions, WatchProgress, summary_line, watch
from processes import interruptible, wait_for_line
from highlightsense.operators.online_select import OnlineSelect, select_above
from highlightsense.operators.select import WindowScore

MOMENTS = [(40.0, 50.0), (95.0, 104.0)]
THRESHOLD = 0.3
W, S = grid.window_frames(30.0), grid.stride_frames(5.0)
FIELDS = ["type", "id", "start_sec", "end_sec", "start_ts", "end_ts", "peak_sec", "confidence",
          "threshold", "forced", "decided_at_sec", "delay_sec", "latency_sec", "emitted_at",
          "source"]  # a highlight's line before broadcast times: these keep their places
BROADCAST = ["broadcast_start_sec", "broadcast_end_sec", "start_utc", "end_utc"]


@pytest.fixture(scope="module")
def vod(tmp_path_factory):
    """150 s of synthetic stream with two moments (and a bang), a small video, 4-s segments;
    and what `detect --threshold` finds in the file."""
    folder = tmp_path_factory.mktemp("watch")
    v = SyntheticVod(150, seed=3, moments=MOMENTS, music=[], bangs=[(70.0, 70.2)])
    path = write_media(folder / "vod.ts", v.blocks(), video=True, fps=10, gop=20)
    cfg = load_config(overrides={"threshold": THRESHOLD, "top_n": 1000, "clips": False})
    result = detect(str(path), folder / "detect", cfg, show_progress=False)
    return path, HlsMedia.from_file(path, 4.0), result


@pytest.fixture
def server():
    with HlsServer() as s:
        yield s


def utc(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run_watch(url, tmp_path, **options):
    out = io.StringIO()
    cfg = load_config(overrides={"threshold": THRESHOLD})
    result = watch(url, cfg, WatchOptions(events_stream=out, poll_sec=0.05, **options),
                   show_progress=False)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return result, lines


def test_watch_on_a_live_stream_emits_what_detect_finds(vod, server, tmp_path):
    path, hls, detected = vod
    urls = server.add_live("live", hls, speed=25, initial=1)  # 150 s in 6 s
    result, lines = run_watch(urls["master"], tmp_path, clips_dir=str(tmp_path / "clips"),
                              max_delay_sec=1000)
    highlights = [e for e in lines if e["type"] == "highlight"]
    expected = detected.selection.kept
    assert len(expected) >= 2
    in_order = sorted(highlights, key=lambda e: e["start_sec"])
    assert [(e["start_sec"], e["confidence"]) for e in in_order] == \
        [(round(w.start_sec, 3), w.confidence) for w in expected]
    for e in highlights:
        assert list(e) == FIELDS + BROADCAST
        # The playlist has program dates (joined at its first segment), not ELAPSED-SECS.
        assert e["broadcast_start_sec"] is None and e["broadcast_end_sec"] is None
        assert (utc(e["start_utc"]) - START_DATE).total_seconds() == \
            pytest.approx(e["start_sec"], abs=0.05)
        assert (utc(e["end_utc"]) - START_DATE).total_seconds() == \
            pytest.approx(e["end_sec"], abs=0.05)
        assert not e["forced"] and e["threshold"] == THRESHOLD
        # Decided after the scorer's look-ahead (~62 s) and NMS, or at the stream's end.
        ended = e["decided_at_sec"] == pytest.approx(result.stream_sec, abs=0.01)
        assert 60 < e["delay_sec"] < 130 or (ended and e["delay_sec"] > 0)
        assert 0 <= e["latency_sec"] < 30  # wall seconds, on a clock 25 times real time
    assert result.windows_seen == len(detected.windows)
    assert not result.stopped_by_user and result.undecided == 0
    # Only the audio-only rendition was analysed; the video was fetched once, for the buffer.
    for kind in ("a", "v"):
        names = [r.path for r in server.requests if r.path.startswith(f"/live/{kind}/")]
        assert len(names) == len(set(names)) == len(hls.audio)

    clips = [e for e in lines if e["type"] == "clip"]
    assert sorted(c["id"] for c in clips) == sorted(e["id"] for e in highlights)
    for clip in clips:
        event = next(e for e in highlights if e["id"] == clip["id"])
        # Stream copy: from the keyframe (every 2 s) at or before the window's start.
        assert event["start_sec"] - 2.05 <= clip["start_sec"] <= event["start_sec"]
        assert clip["end_sec"] == pytest.approx(event["end_sec"], abs=0.1)
        with av.open(clip["path"]) as c:
            assert c.streams.video and c.streams.audio
            frame = next(c.decode(video=0))
            # The stamped frame number says where in the source the clip starts (frame n is
            # shown at n / 10 s of stream time, plus the 23 ms the video starts after the audio).
            assert read_frame_number(frame) / 10 == pytest.approx(clip["start_sec"], abs=0.05)
    assert "2 highlights (0 forced)" in summary_line(result) or len(highlights) != 2


def test_forced_decisions_are_marked_and_come_within_max_delay(vod, server, tmp_path):
    _, hls, _ = vod
    # A playlist that says nothing of the broadcast's time or the clock's.
    urls = server.add_live("live", hls, speed=15, initial=1, dates=False)
    max_delay = 80.0  # the scorer needs ~62 s, NMS ~30 s more: forced before then
    result, lines = run_watch(urls["master"], tmp_path, max_delay_sec=max_delay)
    highlights = [e for e in lines if e["type"] == "highlight"]
    assert any(e["forced"] for e in highlights)
    for e in highlights:
        assert list(e) == FIELDS + BROADCAST and all(e[k] is None for k in BROADCAST)
        # Checked as scores arrive (every 5 s) and every 0.25 s wall (3.75 s of stream at 15x).
        assert e["delay_sec"] <= max_delay + 12
        assert not e["forced"] or e["delay_sec"] >= max_delay
    for start, end in MOMENTS:
        assert any(e["start_sec"] < end and e["end_sec"] > start for e in highlights)


def test_live_events_are_placed_in_the_broadcast_across_an_ad_break(vod, server, tmp_path):
    """Twitch's tags on a sliding live window (EXT-X-TWITCH-ELAPSED-SECS of its first segment at
    each reload, EXT-X-PROGRAM-DATE-TIME), joined two hours into the broadcast at the live edge,
    with an ad break between the join and the first moment: stream time pauses over the ad,
    while each event says where it lies in the broadcast and on the clock."""
    _, hls, _ = vod
    elapsed, date = 7200.0, datetime(2026, 3, 1, 18, 0, tzinfo=timezone.utc)  # of segment 0
    ads = (6, 7)  # 24-32 s of the media, after the join and before the first moment
    urls = server.add_live("twitch", hls, speed=25, initial=5, window=10, ads=ads,
                           elapsed_sec=elapsed, start_date=date)
    clock, joined = urls["clock"], threading.Event()
    published = clock.available

    def available():  # the broadcast runs on once watch has joined: the join is known
        if not joined.is_set():
            if not any(r.path.startswith("/twitch/a/") for r in list(server.requests)):
                return clock.initial
            joined.set()
        return published()

    clock.available = available
    result, lines = run_watch(urls["master"], tmp_path, max_delay_sec=1000)
    highlights = [e for e in lines if e["type"] == "highlight"]

    # Where the stream began and what it left out, from the server's log.
    taken = sorted(int(r.path.rsplit("/", 1)[1][:-3]) for r in server.requests
                   if r.path.startswith("/twitch/a/"))
    join = taken[0]
    assert join == 1  # the live edge: 3 target durations (5 s) back from the 5 listed
    assert taken == [i for i in range(join, len(hls.durations)) if i not in ads]
    starts = np.concatenate([[0.0], np.cumsum(hls.durations)])
    ad_at, ad_sec = starts[ads[0]], starts[ads[-1] + 1] - starts[ads[0]]

    def media_sec(stream_sec, end=False):  # what the test built: the media's time of a moment
        at = starts[join] + stream_sec
        return at + ad_sec if (at > ad_at if end else at >= ad_at) else at

    assert len(highlights) >= 2
    for e in highlights:
        assert list(e) == FIELDS + BROADCAST
        start, end = media_sec(e["start_sec"]), media_sec(e["end_sec"], end=True)
        assert e["broadcast_start_sec"] == pytest.approx(elapsed + start, abs=0.05)
        assert e["broadcast_end_sec"] == pytest.approx(elapsed + end, abs=0.05)
        assert (utc(e["start_utc"]) - date).total_seconds() == pytest.approx(start, abs=0.05)
        assert (utc(e["end_utc"]) - date).total_seconds() == pytest.approx(end, abs=0.05)
    for moment, _ in MOMENTS:
        # Each planted moment, at its own broadcast time and date, is in an event's window.
        moment_utc = date + timedelta(seconds=moment)
        assert any(e["broadcast_start_sec"] <= elapsed + moment <= e["broadcast_end_sec"]
                   and utc(e["start_utc"]) <= moment_utc <= utc(e["end_utc"])
                   for e in highlights)
    # The first moment's window holds the ad break: its broadcast span is the longer by the ad.
    first = min(highlights, key=lambda e: e["start_sec"])
    assert media_sec(first["start_sec"]) < ad_at < media_sec(first["end_sec"], end=True)
    assert first["broadcast_end_sec"] - first["broadcast_start_sec"] == pytest.approx(
        first["end_sec"] - first["start_sec"] + ad_sec, abs=0.05)


def test_max_delay_forces_a_decision_while_the_source_stalls(vod, server):
    """The live playlist stops growing for a while (the broadcast's segments do not come): the
    audio stops, but the stream clock runs on with wall time, so the first candidate window is
    decided, forced, at max_delay past its end, while the audio after it is still missing."""
    from highlightsense.engine.operator import lookahead_samples
    from highlightsense.engine.passes import build_scorer

    _, hls, detected = vod
    cfg = load_config(overrides={"threshold": THRESHOLD})
    lookahead = lookahead_samples(build_scorer(cfg).feature_stages(cfg)) / grid.AUDIO_RATE
    first = min(w.end_sec for w in detected.windows if w.confidence >= THRESHOLD)
    max_delay = lookahead + 12
    # The stall: after the first segments that hold the audio its score needs (a few seconds
    # more, for the decoder), and before max_delay has run past it.
    ends = np.cumsum(hls.durations)
    held = int(np.searchsorted(ends, first + lookahead + 3)) + 1  # segments out before the stall
    stalled_at = float(ends[held - 1])
    assert stalled_at < first + max_delay - 2

    urls = server.add_live("stall", hls, speed=25, initial=1)
    live, released = urls["clock"], threading.Event()
    published = live.available
    live.available = lambda: published() if released.is_set() else min(published(), held)

    class Lines:  # the events as written, and whether the stall was still on
        def __init__(self):
            self.lines, self.forced = [], threading.Event()

        def write(self, text):
            for line in text.splitlines():
                event = json.loads(line)
                missing = not server.requests_for(f"/stall/a/{held}.ts")
                self.lines.append((event, not released.is_set() and missing))
                if event["type"] == "highlight" and event["forced"]:
                    self.forced.set()

        def flush(self):
            pass

    out, got = Lines(), {}

    def run():
        got["result"] = watch(urls["master"], cfg, WatchOptions(
            events_stream=out, poll_sec=0.05, max_delay_sec=max_delay), show_progress=False)

    watcher = threading.Thread(target=run, daemon=True)
    began = time.monotonic()
    watcher.start()
    try:
        assert out.forced.wait(60), "no forced decision while the source stalled"
        stalled_for = time.monotonic() - began
    finally:
        released.set()
        watcher.join(120)
    assert not watcher.is_alive() and "result" in got
    event, during_stall = next((e, s) for e, s in out.lines if e["type"] == "highlight")
    assert event["forced"] and during_stall  # the first event: forced, before the audio resumed
    assert event["start_sec"] < first + 1e-3 + 30 and event["delay_sec"] >= max_delay
    assert event["decided_at_sec"] > stalled_at  # stream time past the audio delivered
    assert stalled_for < 60
    # After the stall the stream goes on to its end, all of it analysed.
    assert got["result"].windows_seen == len(detected.windows)


def test_max_delay_forces_the_greedy_answer_known_at_the_time():
    """Scores arrive 62 s of stream after their window ends, as the loudness scorer's do."""
    conf = [0.1, 0.6, 0.7, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    windows = scored(conf)
    got = []
    select = OnlineSelect(10, 30, 5, got.append, threshold=0.5, max_delay_sec=64.0)
    lag = 62.0
    for i in range(len(conf)):
        at = windows.end_sec[i] + lag  # the stream has run on while scoring
        select.on_tick(Tick(at))
        select.process(scored(conf[i:i + 1], i))
        select.on_tick(Tick(at + 2.5))
    select.flush()
    decided = {d.window.index: d for d in got}
    # Each window must be decided 64 s after its end, 2 s after its score came: window 1 (0.6)
    # with only itself known, so it is kept, and holds against windows 2 and 3 (0.7, 0.8) that
    # overlap it; window 10 (0.9) is too far from it to be held.
    assert sorted(decided) == [1, 10]
    for d in got:
        assert d.forced and d.delay_sec == pytest.approx(64.5)  # at the tick after 64 s
    # Given time, the greedy answer would have been windows 3 and 10: forcing is what it costs.
    assert [w.index for w in select_above(as_windows(conf), 0.5, 10, 99).kept] == [3, 10]


def test_webhook_gets_every_event_in_order_with_retries(vod, server, tmp_path):
    _, hls, _ = vod
    urls = server.add_vod("vod", hls)
    received, answers = [], [500]  # the first POST fails: it must be sent again

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = answers.pop(0) if answers else 200
            if status == 200:
                received.append(json.loads(body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        events = tmp_path / "events.jsonl"
        result, _ = run_watch(urls["master"], tmp_path, start="first", events_path=str(events),
                              webhook=f"http://127.0.0.1:{hook.server_address[1]}/hook")
    finally:
        hook.shutdown()
    written = [json.loads(line) for line in events.read_text().splitlines()]
    assert written and received == written == result.events


def test_watch_cli_follows_a_live_stream_until_ctrl_c(vod, server, tmp_path):
    _, hls, _ = vod
    urls = server.add_live("slow", hls, speed=1.0, initial=3)
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "highlightsense", "watch", urls["master"], "--threshold", "0.3",
         "--events", str(events)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=interruptible)
    try:
        # Once it has announced its scorer, the pipeline runs; then wait for the live edge.
        err = wait_for_line(proc.stderr, b"loudness scorer:", timeout=60)
        deadline = time.monotonic() + 30
        while len(server.requests_for("/slow/a/2.ts")) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # until it follows the live playlist
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        out, rest = proc.communicate(timeout=15)
        err += rest
    finally:
        proc.kill()
    assert time.monotonic() - began < 5
    assert proc.returncode == 0, err
    assert b"reading HLS format audio_only (live)" in err
    assert b"loudness scorer: its features look 62 s ahead" in err
    assert b"stopped at 0:" in err
    assert events.exists() and out == b""


def test_progress_line_shows_stream_time_lag_and_events():
    class Source:
        info = SourceInfo(live_edge_sec=130.0, duration_sec=None)

    select = OnlineSelect(10, 30, 5, lambda d: None, threshold=0.5)
    select.decisions.extend([object(), object()])
    metrics = PipelineMetrics([], position_sec=121.5)
    line = WatchProgress(Source(), select, None, stream=io.StringIO()).line(metrics)
    assert line == "stream 2:01  8 s behind live  events 2  undecided 0"


# -- online selection ----------------------------------------------------------------------------

def scored(conf, first=0):
    idx = np.arange(first, first + len(conf))
    return ScoredWindows(idx, idx * S, idx * S + W, np.asarray(conf, float), idx * S)


def as_windows(conf):
    s = scored(conf)
    return [WindowScore(int(i), float(a), float(b), float(c), 0.0)
            for i, a, b, c in zip(s.index, s.start_sec, s.end_sec, s.confidence)]


@pytest.mark.parametrize("nms_window", [0.0, 10.0, 45.0])
def test_online_nms_equals_the_seeds_greedy_nms(nms_window):
    rng = np.random.default_rng(int(nms_window))
    for trial in range(60):
        conf = rng.random(rng.integers(1, 150))
        if trial % 3 == 0:
            conf = np.round(conf, 1)  # ties: earlier first, as the seed's stable sort
        got = []
        select = OnlineSelect(nms_window, 30, 5, got.append, threshold=0.6)
        early = 0
        for i in range(len(conf)):
            select.process(scored(conf[i:i + 1], i))
            early = len(got)
        select.flush()
        expected = select_above(as_windows(conf), 0.6, nms_window, 10**6).kept
        assert sorted(d.window.index for d in got) == [w.index for w in expected]
        assert not any(d.forced for d in got)
    assert early > 0  # decisions came before the end of the stream


def test_decisions_come_as_soon_as_nothing_can_change_them():
    got = []
    select = OnlineSelect(10, 30, 5, got.append, threshold=0.5)
    conf = [0.1] * 10 + [0.9] + [0.1] * 20
    for i, c in enumerate(conf):
        select.process(scored([c], i))
        if got:
            break
    # Window 10 is final once the windows starting within 30 s after it are known: no later
    # window can overlap it any more.
    assert got[0].window.index == 10 and i == 10 + 6
    assert got[0].decided_at_sec == pytest.approx(scored([0], i).end_sec[0])


def test_rolling_percentile_uses_the_scores_of_the_horizon():
    rng = np.random.default_rng(5)
    conf = rng.random(200)
    got = []
    select = OnlineSelect(0.0, 30, 5, got.append, percentile=90, horizon_sec=120)
    for i in range(len(conf)):
        select.process(scored(conf[i:i + 1], i))
    select.flush()
    windows = as_windows(conf)
    candidates = []
    for w in windows:
        recent = [v.confidence for v in windows if w.end_sec - 120 < v.end_sec <= w.end_sec]
        threshold = np.percentile(recent, 90)
        if w.confidence >= threshold:
            candidates.append((w, threshold))
    from highlightsense.operators.select import apply_nms

    kept = apply_nms([w for w, _ in candidates], 0.0)
    assert [d.window.index for d in sorted(got, key=lambda d: d.window.index)] == \
        [w.index for w in kept]
    thresholds = dict((w.index, t) for w, t in candidates)
    assert all(d.threshold == thresholds[d.window.index] for d in got)
