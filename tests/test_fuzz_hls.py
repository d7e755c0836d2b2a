"""Fuzz the HLS reader with generated playlists (issue 17): media and master, live and VOD, every
tag the parser knows with random attribute values and lengths, served from a real server on
127.0.0.1 and read in-process by HlsReader, every segment (and init section) fetched. A case
passes when it ends within CASE_BOUND_SEC with its fragments or with a HighlightSenseError of one
line, under MEMORY_BOUND bytes (tracemalloc); any other exception, a hang or more memory fails.

Hypothesis profiles: "hls-ci" (the default: 300 cases, and at most HS_FUZZ_HLS_SECONDS seconds,
default 25) and "hls-long" (5000 cases, no time cap), chosen by HS_FUZZ_HLS_PROFILE:

    HS_FUZZ_HLS_PROFILE=hls-long pytest -q -s tests/test_fuzz_hls.py
"""
import collections
import os
import threading
import time
import tracemalloc
from urllib.parse import urljoin

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from highlightsense.benchmarks.hls_server import HlsServer
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.fetch import FetchPolicy
from highlightsense.operators.sources.hls_playlist import MediaPlaylist, parse_playlist
from highlightsense.operators.sources.hls_reader import HlsReader

CASE_BOUND_SEC = 10.0
MEMORY_BOUND = 48 * 2**20
SECONDS = float(os.environ.get("HS_FUZZ_HLS_SECONDS", 25))
POLICY = FetchPolicy(tries=2, backoff_sec=0.01, timeout_sec=1.0, stall_sec=1.0,
                     deadline_sec=2.0)

settings.register_profile("hls-ci", max_examples=300, deadline=None, database=None,
                          phases=(Phase.explicit, Phase.generate),
                          suppress_health_check=list(HealthCheck))
settings.register_profile("hls-long", max_examples=5000, deadline=None, database=None,
                          phases=(Phase.explicit, Phase.generate, Phase.shrink),
                          suppress_health_check=list(HealthCheck))
PROFILE = os.environ.get("HS_FUZZ_HLS_PROFILE", "hls-ci")

# -- what a playlist is made of -------------------------------------------------------------------

junk = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
long_run = st.builds(lambda c, n: c * n, st.sampled_from(["A", "A1-", ",", '"', "=", "\t"]),
                     st.integers(0, 20_000))
number = st.one_of(st.integers(-5, 10**6).map(str), st.floats(allow_nan=True,
                                                                allow_infinity=True).map(repr),
                   st.sampled_from(["", "nan", "inf", "-0", "1e400", "0x10", "1.5", "99" * 15]),
                   junk)
seconds = st.one_of(st.floats(0, 12).map(lambda x: f"{x:.3f}"), number)
date = st.one_of(st.just("2026-01-01T00:00:00.000Z"), st.just("9999-12-31T23:59:59Z"), junk)
segment_uri = st.one_of(st.sampled_from(["s0.ts", "s1.ts", "s2.ts", "missing.ts", "/abs/s0.ts",
                                         "https:///x.ts", "ftp://h/x.ts", "../x/s1.ts", "s0.ts?x",
                                         "http://[::1/x.ts", "http://127.0.0.1:1/x.ts"]), junk)
ATTRIBUTE_NAMES = ["URI", "BYTERANGE", "METHOD", "ID", "CLASS", "START-DATE", "END-DATE",
                   "DURATION", "BANDWIDTH", "CODECS", "RESOLUTION", "AUDIO", "VIDEO", "TYPE",
                   "GROUP-ID", "NAME", "DEFAULT", "IV"]


@st.composite
def attribute_list(draw):
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(st.sampled_from(ATTRIBUTE_NAMES), junk))
        value = draw(st.one_of(number, segment_uri, date, junk, long_run,
                               st.sampled_from(["NONE", "AES-128", "AUDIO", "YES", "mp4a.40.2",
                                                "twitch-stitched-ad", "stitched-ad-1",
                                                "10@0", "abc", "audio_only"])))
        quoted = draw(st.booleans())
        parts.append(f'{name}="{value}"' if quoted else f"{name}={value}")
    return ",".join(parts) + draw(st.one_of(st.just(""), long_run))


@st.composite
def media_line(draw):
    kind = draw(st.sampled_from(["segment"] * 6 + ["tag"] * 6 + ["junk"]))
    if kind == "segment":
        lines = []
        if draw(st.booleans()):
            lines.append(f"#EXT-X-BYTERANGE:{draw(st.sampled_from(['10', '5@2', '100@0']))}"
                         if draw(st.booleans()) else f"#EXT-X-BYTERANGE:{draw(number)}")
        title = draw(st.sampled_from(["", "live", "Amazon|1", "x,y"]))
        lines += [f"#EXTINF:{draw(seconds)},{title}", draw(segment_uri)]
        return lines
    if kind == "junk":
        return [draw(st.one_of(junk, long_run))]
    tag = draw(st.sampled_from([
        "#EXT-X-VERSION", "#EXT-X-TARGETDURATION", "#EXT-X-MEDIA-SEQUENCE",
        "#EXT-X-DISCONTINUITY-SEQUENCE", "#EXT-X-PLAYLIST-TYPE", "#EXT-X-ENDLIST",
        "#EXT-X-TWITCH-ELAPSED-SECS", "#EXT-X-DISCONTINUITY", "#EXT-X-MAP", "#EXT-X-KEY",
        "#EXT-X-PROGRAM-DATE-TIME", "#EXT-X-DATERANGE", "#EXT-X-CUE-OUT", "#EXT-X-CUE-OUT-CONT",
        "#EXT-X-CUE-IN", "#EXT-OATCLS-SCTE35", "#EXTINF"]))
    if tag in ("#EXT-X-MAP", "#EXT-X-KEY", "#EXT-X-DATERANGE"):
        value = draw(attribute_list())
        if tag == "#EXT-X-MAP" and draw(st.booleans()):
            value = 'URI="init.mp4"' + ("," + value if value else "")
        if tag == "#EXT-X-DATERANGE" and draw(st.booleans()):
            value = (f'ID="stitched-ad-1",CLASS="twitch-stitched-ad",START-DATE="{draw(date)}",'
                     f"DURATION={draw(seconds)}")
    elif tag == "#EXT-X-PROGRAM-DATE-TIME":
        value = draw(date)
    elif tag == "#EXT-X-PLAYLIST-TYPE":
        value = draw(st.sampled_from(["VOD", "EVENT", "vod", ""]) | junk)
    elif tag in ("#EXT-X-TARGETDURATION", "#EXT-X-TWITCH-ELAPSED-SECS", "#EXTINF"):
        value = draw(seconds)
    else:
        value = draw(number)
    return [f"{tag}:{value}" if value or draw(st.booleans()) else tag]


@st.composite
def media_playlist_text(draw, live=None):
    lines = ["#EXTM3U" if draw(st.integers(0, 20)) else draw(junk)]
    for group in draw(st.lists(media_line(), max_size=14)):
        lines += group
    live = draw(st.booleans()) if live is None else live
    if not live:
        lines.append("#EXT-X-ENDLIST")
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return ending.join(lines) + ending


@st.composite
def master_text(draw):
    lines = ["#EXTM3U"]
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            lines += [f"#EXT-X-STREAM-INF:{draw(attribute_list())}",
                      draw(st.sampled_from(["media.m3u8", "master.m3u8", "missing.m3u8",
                                            "s0.ts"]) | junk)]
        else:
            lines.append(f"#EXT-X-MEDIA:{draw(attribute_list())}"
                         + draw(st.sampled_from(['', ',TYPE=AUDIO,URI="media.m3u8"'])))
    return "\n".join(lines) + "\n"


case = st.one_of(st.tuples(st.just("media"), media_playlist_text(), st.just("")),
                 st.tuples(st.just("master"), master_text(), media_playlist_text()))

# -- one case ---------------------------------------------------------------------------------------


def read(url: str, outcome: dict) -> None:
    """What the HLS source does with a playlist: every fragment's bytes, with init sections."""
    try:
        reader = HlsReader(url, POLICY, parallel=2, poll_sec=0.05, idle_sec=0.2)
        outcome["reader"] = reader
        got = []
        for fragment in reader.fragments():
            got.append(len(reader.init_section(fragment.segment))
                       + len(fragment.download.result()))
        outcome["result"] = got
    except HighlightSenseError as e:
        outcome["error"] = e
    except BaseException as e:  # noqa: BLE001 - what the test is looking for
        outcome["crash"] = e


def shown(kind: str, text: str) -> str:
    """A case for a failure's message: long runs cut short."""
    return f"{kind} playlist {text[:1500]!r}" + (f" ... ({len(text)} chars)"
                                                if len(text) > 1500 else "")


class Run:
    def __init__(self, server: HlsServer):
        self.server = server
        self.cases = 0
        self.outcomes = collections.Counter()
        self.slowest = 0.0

    def check(self, kind: str, text: str, media_text: str) -> None:
        self.cases += 1
        prefix = f"/c{self.cases}"
        server = self.server
        for name in ("s0.ts", "s1.ts", "s2.ts"):
            server.files[f"{prefix}/{name}"] = b"\x47" * 376
        server.files[f"{prefix}/init.mp4"] = b"\x00" * 64
        first = "master.m3u8" if kind == "master" else "media.m3u8"
        server.files[f"{prefix}/master.m3u8"] = text.encode() if kind == "master" else b""
        server.files[f"{prefix}/media.m3u8"] = (media_text if kind == "master" else text).encode()
        outcome = {}
        tracemalloc.start()
        began = time.monotonic()
        try:
            worker = threading.Thread(target=read, args=(server.url(f"{prefix}/{first}"),
                                                         outcome), daemon=True)
            worker.start()
            worker.join(CASE_BOUND_SEC)
            took = time.monotonic() - began
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            for path in [p for p in server.files if p.startswith(prefix + "/")]:
                del server.files[path]
        self.slowest = max(self.slowest, took)
        if worker.is_alive():
            if "reader" in outcome:
                outcome["reader"].close()
            raise AssertionError(f"no end within {CASE_BOUND_SEC} s: {shown(kind, text)}")
        assert "crash" not in outcome, (f"{type(outcome['crash']).__name__}: "
                                        f"{outcome['crash']} for {shown(kind, text)}")
        assert peak < MEMORY_BOUND, (peak, shown(kind, text))
        if "error" in outcome:
            message = str(outcome["error"])
            assert message and "\n" not in message, (message, shown(kind, text))
            self.outcomes["one-line error"] += 1
        else:
            self.outcomes["read"] += 1


@pytest.fixture(scope="module")
def server():
    with HlsServer() as s:
        yield s


def test_generated_playlists_end_in_a_result_or_one_line(server):
    run = Run(server)
    stop = time.monotonic() + SECONDS if PROFILE == "hls-ci" else float("inf")

    @settings(settings.get_profile(PROFILE))
    @given(case)
    def fuzz(generated):
        if time.monotonic() > stop:
            return
        run.check(*generated)

    fuzz()
    print(f"\nHLS fuzz ({PROFILE}): {run.cases} cases, {dict(run.outcomes)}, slowest "
          f"{run.slowest:.2f} s")
    assert run.cases >= 50 and run.outcomes["read"] and run.outcomes["one-line error"]


@settings(max_examples=200, deadline=None, database=None)
@given(uri=st.text(st.characters(codec="ascii",  # not the line breaks of str.splitlines
                                  exclude_characters="\r\n\x0b\x0c\x1c\x1d\x1e"), min_size=1,
                   max_size=20).filter(lambda u: not u.startswith("#") and u.strip() == u),
       base=st.sampled_from(["http://h/a/b.m3u8", "https://h:8/x.m3u8?t=1", "http://h",
                             "http://h/dir/", "http://h/a.m3u8#frag"]))
def test_segment_uris_join_as_urljoin_does(uri, base):
    """The parser's fast path for plain relative names gives what urljoin gives."""
    text = f"#EXTM3U\n#EXTINF:1,\n{uri}\n#EXT-X-ENDLIST\n"
    try:
        playlist = parse_playlist(text, base)
    except HighlightSenseError:
        return
    assert isinstance(playlist, MediaPlaylist)
    assert [s.uri for s in playlist.segments] == [urljoin(base, uri)]
