"""`highlightsense export`: the highlights as editors' timelines, checked by real clients where
there is one (melt renders the MLT; OTIO reads back what its adapters wrote) and by the rules
of the format otherwise (FCPXML's rational times, YouTube's chapter rules)."""
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from fractions import Fraction

import av
import numpy as np
import pytest

from highlightsense.benchmarks.media import read_frame_number, write_media
from highlightsense.engine.cli import main
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sinks import timelines
from highlightsense.operators.sinks.decisions import kept_ranks
from highlightsense.operators.sinks.timelines import Media, plan
from highlightsense.operators.sources.decode import AudioDecoder

NTSC = Fraction(30000, 1001)
ROWS = [  # rank order; stream seconds
    {"rank": 1, "start_sec": 12.0, "end_sec": 15.5, "peak_sec": 13.2, "confidence": 0.91},
    {"rank": 2, "start_sec": 2.0, "end_sec": 5.0, "peak_sec": 3.0, "confidence": 0.82},
    {"rank": 3, "start_sec": 7.3, "end_sec": 10.1, "peak_sec": 9.0, "confidence": 0.77},
]
# melt is required, not optional: .ci/run installs Debian's (apt-get install melt).
MELT = shutil.which("melt")


def _blocks(seconds, rate=44100):
    rng = np.random.default_rng(0)
    for i in range(0, int(seconds * rate), rate):
        yield (0.01 * rng.standard_normal((2, min(rate, int(seconds * rate) - i)))).astype(
            np.float32)


@pytest.fixture(scope="module")
def vod(tmp_path_factory):
    """18 s at 29.97 fps, each frame's number stamped on it, a keyframe every second; the
    container starts at 2.5 s (so stream time, container time and editor time all differ)."""
    path = tmp_path_factory.mktemp("vod") / "stream.mkv"
    return write_media(path, _blocks(18), video=True, fps=NTSC, gop=30, start_sec=2.5)


def make_run(folder, source, rows=ROWS, order="rank"):
    """A finished run's folder as detect leaves it (highlights.json), for these rows."""
    folder.mkdir(parents=True, exist_ok=True)
    origin = AudioDecoder(str(source)).info.origin_sec if source.exists() else 0.0
    rows = [dict(r, clip_path=r.get("clip_path", ""), clip_start_sec=r.get("clip_start_sec", ""))
            for r in rows]
    record = {"source": str(source), "origin_sec": origin, "duration_sec": 18.0,
              "video": timelines.media_record(timelines.probe(source)),
              "settings": {"order": order}, "highlights": rows}
    (folder / "highlights.json").write_text(json.dumps(record))
    (folder / "raw_window_scores.csv").write_text("window_index,start_sec,end_sec,confidence\n")
    return folder, origin


# Where the test VOD's video starts: its frames are shifted by whole frames (74 of 29.97) and
# Matroska keeps milliseconds; its audio starts elsewhere (2.5 s, less AAC's priming).
VIDEO_START = Fraction(2469, 1000)


def source_frame(stream_sec, origin):
    """The source frame at a stream time, worked out here: the stamped frame n shows from
    n / fps after the video's start."""
    return int((Fraction(stream_sec) + Fraction(origin) - VIDEO_START) * NTSC + Fraction(1, 2))


def rendered_frames(mlt, tmp_path):
    """Render with melt (Shotcut's and Kdenlive's engine) and read the stamp of every frame."""
    assert MELT, "these tests need melt, MLT's command-line player: apt-get install melt"
    out = tmp_path / "render.mkv"
    done = subprocess.run([MELT, "-quiet", str(mlt), "-consumer", f"avformat:{out}",
                           "vcodec=ffv1", "an=1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == NTSC
        return [read_frame_number(f) for f in c.decode(video=0)]


def expected_frames(rows, origin):
    want = []
    for r in rows:
        want += range(source_frame(r["start_sec"], origin), source_frame(r["end_sec"], origin))
    return want


def test_the_source_frame_rate_is_recorded(vod):
    record = timelines.media_record(timelines.probe(vod))
    assert record["frame_rate"] == "30000/1001"
    assert Fraction(record["video_start_sec"]).limit_denominator(1000) == VIDEO_START
    assert AudioDecoder(str(vod)).info.origin_sec != record["video_start_sec"]


def test_melt_renders_the_mlt_from_the_right_source_times(vod, tmp_path):
    run, origin = make_run(tmp_path / "run", vod)
    assert main(["export", str(run), "--format", "mlt", "-q"]) == 0
    stamps = rendered_frames(run / "timeline.mlt", tmp_path)
    want = expected_frames(ROWS, origin)
    # Duration: the sum of the ranges, to the frame; and each frame the source's at that time.
    assert len(stamps) == len(want) == sum(
        source_frame(r["end_sec"], origin) - source_frame(r["start_sec"], origin) for r in ROWS)
    assert stamps == want
    # The peaks are markers that melt keeps (its xml consumer writes back what it read).
    back = tmp_path / "back.mlt"
    subprocess.run(["melt", "-quiet", str(run / "timeline.mlt"), "-consumer", f"xml:{back}"],
                   check=True, timeout=60, capture_output=True)
    text = back.read_text()
    assert "shotcut:markers" in text and "kdenlive:guides" in text
    guides = json.loads(ET.parse(back).getroot().find(
        ".//property[@name='kdenlive:guides']").text)
    at, positions = 0, []
    for r in ROWS:
        a = source_frame(r["start_sec"], origin)
        positions.append(at + source_frame(r["peak_sec"], origin) - a)
        at += source_frame(r["end_sec"], origin) - a
    assert [g["pos"] for g in guides] == positions


def test_time_order_and_clip_files_give_the_same_frames(vod, tmp_path):
    """--media clips: the ranges point into each clip file, whose first frame is the keyframe
    before the window (clip_start_sec), and still show the source's frames."""
    from highlightsense.operators.sinks.clips import cut_clips

    origin = AudioDecoder(str(vod)).info.origin_sec
    clips = cut_clips(vod, tmp_path / "clips", [(r["start_sec"], r["end_sec"]) for r in ROWS],
                      origin_sec=origin)
    assert any(c.start_sec < r["start_sec"] - 0.1 for c, r in zip(clips, ROWS))  # copy cuts
    rows = [dict(r, clip_path=str(c.path), clip_start_sec=c.start_sec)
            for r, c in zip(ROWS, clips)]
    run, _ = make_run(tmp_path / "run", vod, rows)
    assert main(["export", str(run), "--format", "mlt", "--media", "clips", "--order", "time",
                 "--to", str(tmp_path / "c.mlt"), "-q"]) == 0
    by_time = sorted(ROWS, key=lambda r: r["start_sec"])
    assert rendered_frames(tmp_path / "c.mlt", tmp_path) == expected_frames(by_time, origin)
    # A URL source (an HLS VOD) exports against the clips: editors cannot open the URL.
    import opentimelineio as otio

    record = json.loads((run / "highlights.json").read_text())
    record["source"] = "https://example.com/vod/index.m3u8"
    (run / "highlights.json").write_text(json.dumps(record))
    assert main(["export", str(run), "--format", "otio", "-q"]) == 0
    urls = [c.media_reference.target_url
            for c in otio.adapters.read_from_file(str(run / "timeline.otio")).find_clips()]
    assert urls == ["file://" + str(c.path) for c in clips]


def test_otio_formats_read_back_as_the_selection(vod, tmp_path):
    import opentimelineio as otio

    run, origin = make_run(tmp_path / "run", vod)
    assert main(["export", str(run), "--format", "otio,fcp7xml,edl", "--to",
                 str(tmp_path / "out"), "-q"]) == 0
    rate = float(NTSC)
    for name, kw in (("timeline.otio", {}), ("timeline.xml", {}), ("timeline.edl",
                                                                    {"rate": rate})):
        tl = otio.adapters.read_from_file(str(tmp_path / "out" / name), **kw)
        clips = list(tl.find_clips())
        assert len(clips) == len(ROWS), name
        for clip, r in zip(clips, ROWS):
            a, b = source_frame(r["start_sec"], origin), source_frame(r["end_sec"], origin)
            assert clip.name == f"#{r['rank']} score {r['confidence']:.3f}", name
            assert clip.source_range.start_time.rescaled_to(rate).value == a, name
            assert clip.source_range.duration.rescaled_to(rate).value == b - a, name
            if name != "timeline.edl":  # cmx_3600's markers do not read back
                assert "stream.mkv" in clip.media_reference.target_url
                peak, = clip.markers
                assert peak.marked_range.start_time.rescaled_to(rate).value == source_frame(
                    r["peak_sec"], origin), name
    edl = (tmp_path / "out" / "timeline.edl").read_text()
    tc = otio.opentime.to_timecode(otio.opentime.RationalTime(source_frame(12.0, origin), rate),
                                   rate, True)
    assert f" {tc} " in edl and ";" in tc  # rank 1's in-point, drop-frame


def _rational(text):
    assert text.endswith("s"), text
    return Fraction(text[:-1])


def test_fcpxml_has_rational_times_that_add_up(vod, tmp_path):
    run, origin = make_run(tmp_path / "run", vod)
    assert main(["export", str(run), "--format", "fcpxml", "-q"]) == 0
    root = ET.parse(run / "timeline.fcpxml").getroot()
    assert root.tag == "fcpxml" and root.get("version")
    fmt = root.find("resources/format")
    frame = _rational(fmt.get("frameDuration"))
    assert frame == 1 / NTSC and (fmt.get("width"), fmt.get("height")) == ("160", "90")
    asset = root.find("resources/asset")
    assert asset.find("media-rep").get("src").startswith("file://")
    assert asset.find("media-rep").get("src").endswith("/stream.mkv")
    seq = root.find("library/event/project/sequence")
    assert seq.get("tcFormat") == "DF" and seq.get("format") == fmt.get("id")
    clips = seq.findall("spine/asset-clip")
    at = Fraction(0)
    for clip, r in zip(clips, ROWS, strict=True):
        offset, start, dur = (_rational(clip.get(k)) for k in ("offset", "start", "duration"))
        for t in (offset, start, dur):
            assert (t / frame).denominator == 1  # on a frame
        assert offset == at and clip.get("ref") == asset.get("id")
        assert start == source_frame(r["start_sec"], origin) * frame
        assert abs(start - (Fraction(r["start_sec"] + origin) - VIDEO_START)) <= frame / 2
        marker = _rational(clip.find("marker").get("start"))
        assert start <= marker < start + dur
        assert marker == source_frame(r["peak_sec"], origin) * frame
        at += dur
    assert _rational(seq.get("duration")) == at


def _cuts(*seconds):
    """A plan with cuts of these lengths, back to back, against a 25 fps file."""
    media = Media("/v.mp4", Fraction(25), duration_sec=100000)
    rows, t = [], 0.0
    for i, s in enumerate(seconds, 1):
        rows.append({"rank": i, "start_sec": t, "end_sec": t + s, "peak_sec": t,
                     "confidence": 0.5})
        t += s + 100
    return plan(rows, media)


def test_chapters_follow_youtubes_rules():
    lines = timelines.to_chapters(_cuts(30, 12.4, 30)).splitlines()
    assert lines == ["00:00 #1 score 0.500", "00:30 #2 score 0.500", "00:42 #3 score 0.500"]
    long = timelines.to_chapters(_cuts(*[400] * 10)).splitlines()
    assert long[0].startswith("0:00:00 ") and long[-1].startswith("1:00:00 ")
    with pytest.raises(HighlightSenseError, match="at least 3"):
        timelines.to_chapters(_cuts(30, 30))
    with pytest.raises(HighlightSenseError, match="#2 score 0.500 would be a 9 s chapter"):
        timelines.to_chapters(_cuts(30, 9, 30))
    with pytest.raises(HighlightSenseError, match="#3 .* would be a 9 s chapter"):
        timelines.to_chapters(_cuts(30, 30, 9.2))


def test_csv_segments_are_losslesscuts_seconds(vod, tmp_path):
    run, origin = make_run(tmp_path / "run", vod)
    assert main(["export", str(run), "--format", "csv-segments", "--order", "time", "-q"]) == 0
    lines = (run / "timeline.csv").read_text().splitlines()
    got = [(float(a), float(b), label) for a, b, label in (x.split(",") for x in lines)]
    by_time = sorted(ROWS, key=lambda r: r["start_sec"])
    assert [g[2] for g in got] == [f"#{r['rank']} score {r['confidence']:.3f}" for r in by_time]
    for (a, b, _), r in zip(got, by_time):
        for got_sec, stream_sec in ((a, r["start_sec"]), (b, r["end_sec"])):
            assert abs(got_sec - (stream_sec + origin - float(VIDEO_START))) <= 0.5 / float(NTSC)


@pytest.mark.parametrize("fps", [NTSC, Fraction(60000, 1001)])
def test_a_three_hour_source_keeps_its_last_marker_on_its_frame(fps):
    """No drift: a peak at 2:59:45 of a 3-hour 29.97 (59.94) source lands on the frame nearest
    that time in every format, and its drop-frame timecode reads that wall-clock time."""
    import opentimelineio as otio

    media = Media("/vod.mp4", fps, duration_sec=3 * 3600)
    rows = [{"rank": 1, "start_sec": 10770.0, "end_sec": 10800.0, "peak_sec": 10785.0,
             "confidence": 0.9},
            {"rank": 2, "start_sec": 60.0, "end_sec": 90.0, "peak_sec": 75.0, "confidence": 0.8}]
    p = plan(rows, media, order="time")
    peak = round(10785 * fps)  # the frame nearest 2:59:45 (no half frames here)
    assert abs(peak / fps - 10785) <= 1 / (2 * fps)
    # OTIO JSON: the marker's frame, and a drop-frame timecode of 02:59:45 (a non-drop count
    # would read 02:59:34, 10.8 s early).
    tl = otio.adapters.read_from_string(timelines.to_otio_json(p), adapter_name="otio_json")
    last = list(tl.find_clips())[-1]
    mark = last.markers[0].marked_range.start_time
    assert mark.value == peak
    assert otio.opentime.to_timecode(mark, float(fps), True).startswith("02:59:45;")
    # FCPXML: the rational start is that frame exactly.
    root = ET.fromstring(timelines.to_fcpxml(p).split("\n", 2)[2])
    marker = root.findall(".//asset-clip")[-1].find("marker")
    assert _rational(marker.get("start")) == Fraction(peak) / fps
    # EDL: the source in-point's drop-frame timecode reads 02:59:30.
    edl = timelines.to_edl(p)
    assert "02:59:30;0" in edl or "02:59:29;" in edl
    back = otio.adapters.read_from_string(edl, adapter_name="cmx_3600", rate=float(fps))
    assert list(back.find_clips())[-1].source_range.start_time.value == round(10770 * fps)
    # MLT: the marker on the timeline frame (the first cut is 30 s long).
    root = ET.fromstring(timelines.to_mlt(p).split("\n", 1)[1])
    guides = json.loads(root.find(".//property[@name='kdenlive:guides']").text)
    first = round(90 * fps) - round(60 * fps)
    assert guides[-1]["pos"] == first + peak - round(10770 * fps)


def test_a_sources_timecode_starts_its_frames():
    """A source whose video carries a starting timecode (01:00:00;00): the editor's source
    times start there, in every format that names source timecode (MLT counts from 0)."""
    import opentimelineio as otio

    media = Media("/cam.mov", NTSC, duration_sec=600, timecode="01:00:00;00")
    p = plan([{"rank": 1, "start_sec": 60.0, "end_sec": 70.0, "peak_sec": 65.0,
               "confidence": 0.5}], media)
    hour = 107892  # 01:00:00;00 in 29.97 drop-frame frames
    clip, = otio.adapters.read_from_string(timelines.to_fcp7xml(p),
                                           adapter_name="fcp_xml").find_clips()
    assert clip.source_range.start_time.value == hour + round(60 * NTSC)
    assert " 01:00:59;28 " in timelines.to_edl(p)  # 60 s after (01:01:00;02 is 1800 frames)
    root = ET.fromstring(timelines.to_fcpxml(p).split("\n", 2)[2])
    assert _rational(root.find("resources/asset").get("start")) == hour / NTSC
    assert 'in="1798' in timelines.to_mlt(p)


def test_review_decisions_filter_the_export_unless_all(vod, tmp_path):
    import opentimelineio as otio

    run, _ = make_run(tmp_path / "run", vod)
    assert kept_ranks(run) is None
    (run / "review.json").write_text(json.dumps({"decisions": {
        "2": {"keep": False, "note": "meh"}, "1": {"keep": True, "note": ""},
        "3": {"note": "undecided", "start_sec": 7.3, "end_sec": 10.1}}}))
    assert kept_ranks(run) == {1, 3}  # undecided counts as kept
    assert main(["export", str(run), "--format", "otio", "-q"]) == 0
    names = [c.name for c in otio.adapters.read_from_file(str(run / "timeline.otio")).find_clips()]
    assert names == ["#1 score 0.910", "#3 score 0.770"]
    assert main(["export", str(run), "--format", "otio", "--all", "-q"]) == 0
    tl = otio.adapters.read_from_file(str(run / "timeline.otio"))
    assert len(list(tl.find_clips())) == 3


def test_an_audio_only_source_gets_30_fps_and_says_so(tmp_path, capsys):
    source = write_media(tmp_path / "talk.m4a", _blocks(18))
    run, origin = make_run(tmp_path / "run", source)
    assert json.loads((run / "highlights.json").read_text())["video"]["frame_rate"] is None
    assert main(["export", str(run), "--format", "fcpxml"]) == 0
    assert "no video: the timeline runs at 30 fps" in capsys.readouterr().err
    root = ET.parse(run / "timeline.fcpxml").getroot()
    assert root.find("resources/format").get("frameDuration") == "1/30s"
    assert root.find("resources/asset").get("hasVideo") == "0"
    start = _rational(root.find(".//asset-clip").get("start"))  # rank 1, at 12 s
    assert start == Fraction(int((12 + Fraction(origin)) * 30 + Fraction(1, 2)), 30)


def test_bad_formats_and_folders_are_one_line(vod, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--format", "mp4"])
    assert "unknown export format mp4" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none"), "--format", "edl"]) == 1
    assert "holds no finished run" in capsys.readouterr().err
    run, _ = make_run(tmp_path / "run", vod, ROWS[:2])
    assert main(["export", str(run), "--format", "chapters"]) == 1
    err = capsys.readouterr().err
    assert "cannot make YouTube chapters" in err and err.count("\n") == 1
    assert main(["export", str(run), "--format", "csv-segments", "--media", "clips"]) == 1
    assert "needs the clip files" in capsys.readouterr().err


def test_detect_export_writes_the_timelines(tmp_path, capsys):
    source = write_media(tmp_path / "v.mp4", _blocks(60), video=True, fps=25)
    out = tmp_path / "out"
    assert main(["detect", str(source), "--out", str(out), "--window-sec", "12", "--stride-sec",
                 "12", "--top-n", "3", "--nms-window", "0", "--threshold-percentile", "0",
                 "--no-clips", "--export", "otio,chapters",
                 "-q"]) == 0
    record = json.loads((out / "highlights.json").read_text())
    assert record["video"]["frame_rate"] == "25"
    assert (out / "timeline.otio").exists() and (out / "timeline.txt").exists()
    assert main(["select", str(out), "--top-n", "2", "--export", "edl"]) == 0
    assert (out / "timeline.edl").read_text().count("FROM CLIP NAME") == 2
    # The earlier exports follow the new selection: none describes the old one.
    import opentimelineio as otio

    assert len(list(otio.adapters.read_from_file(str(out / "timeline.otio")).find_clips())) == 2
    assert not (out / "timeline.txt").exists()  # 2 highlights cannot make chapters
    assert "removed" in capsys.readouterr().err
