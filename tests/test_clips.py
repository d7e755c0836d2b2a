"""Clip cutting on real files: where clips start, how long they are, what they hold."""
import av
import numpy as np
import pytest

from highlightsense.benchmarks.media import beeps, find_beeps, read_frame_number, write_media
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sinks.clips import ClipResult, cut_clip, cut_clips
from highlightsense.operators.sources.decode import AudioDecoder

RATE = 44100
FPS = 10
BEEP = 7.0  # seconds into the source
START, END = 5.3, 9.1  # the window cut in most tests


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Source files, written once: 12 s, beep at 7 s, video keyframes every 2 s."""
    folder = tmp_path_factory.mktemp("media")

    def make(name, **kwargs):
        return write_media(folder / name, beeps(12.0, [BEEP]), **kwargs)

    return {
        "mp4": make("game.mp4", video=True, fps=FPS, gop=2 * FPS),
        "pcm.mkv": make("game.mkv", video=True, fps=FPS, audio_codec="pcm_s16le"),
        "ts": make("game.ts", video=True, fps=FPS),  # starts at 1.4 s
        "bframes.ts": make("bframes.ts", video=True, fps=FPS, bframes=3),
        "late.mkv": make("late.mkv", video=True, fps=FPS, start_sec=5.0),
        "m4a": make("talk.m4a"),
        "wav": make("talk.wav"),
        "flac": make("talk.flac"),
        "mp3": make("talk.mp3"),
        "webm": make("talk.webm"),
    }


def decode(path):
    """(samples, origin_sec) of a clip's audio."""
    decoder = AudioDecoder(path)
    samples = np.concatenate([c.samples for c in decoder], axis=1)
    return samples, decoder.info.origin_sec


def first_frame(path):
    """(frame number stamped on the clip's first picture, its time, video duration)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        return read_frame_number(frame), float(frame.pts * frame.time_base), duration


def codecs(path):
    with av.open(str(path)) as container:
        return [s.codec_context.codec.canonical_name for s in container.streams]


def beep_in_clip(path):
    """The beep's time on the clip's own clock (its container time)."""
    samples, origin = decode(path)
    beeps_found = find_beeps(samples)
    assert len(beeps_found) == 1
    return origin + beeps_found[0]


def source_beep(path):
    """The beep's stream time in a source (after any codec delay)."""
    samples, _ = decode(path)
    return find_beeps(samples)[0]


def test_copy_snaps_to_the_keyframe_before(media, tmp_path):
    result = cut_clip(media["mp4"], tmp_path / "highlight_01", START, END)
    assert isinstance(result, ClipResult)
    assert result.path == tmp_path / "highlight_01.mp4" and result.path.exists()
    assert result.mode == "copy"
    assert result.start_sec == pytest.approx(4.0)  # keyframes at 0, 2, 4, ...: 4 s <= 5.3 s
    assert result.end_sec == pytest.approx(END, abs=0.1)
    assert "keyframe" in result.note
    number, t, duration = first_frame(result.path)
    assert (number, t) == (40, 0.0)
    assert duration == pytest.approx(END - 4.0, abs=0.1)
    assert codecs(result.path) == ["h264", "aac"]
    # Audio stays in sync with the video: the beep sits at its time from the keyframe.
    assert beep_in_clip(result.path) == pytest.approx(BEEP - result.start_sec, abs=0.03)
    assert list(tmp_path.iterdir()) == [result.path]  # no temporary file left


def test_exact_starts_at_the_requested_time(media, tmp_path):
    result = cut_clip(media["mp4"], tmp_path / "highlight_01", START, END, exact=True)
    assert result.mode == "exact" and result.path.suffix == ".mp4"
    assert (result.start_sec, result.end_sec) == pytest.approx((START, END))
    number, t, duration = first_frame(result.path)
    assert t == 0.0 and abs(number - START * FPS) <= 1
    assert duration == pytest.approx(END - START, abs=1 / FPS + 0.01)
    samples, _ = decode(result.path)
    assert samples.shape[1] / RATE == pytest.approx(END - START, abs=1024 / RATE + 0.002)
    assert beep_in_clip(result.path) == pytest.approx(BEEP - START, abs=0.003)


def test_pcm_audio_next_to_video_goes_to_aac(media, tmp_path):
    result = cut_clip(media["pcm.mkv"], tmp_path / "clip", START, END)
    assert result.path.suffix == ".mp4" and result.mode == "copy+aac"
    assert "AAC" in result.note and "pcm_s16le" in result.note
    assert codecs(result.path) == ["h264", "aac"]
    assert result.start_sec == pytest.approx(4.0)
    assert first_frame(result.path)[0] == 40
    assert beep_in_clip(result.path) == pytest.approx(BEEP - result.start_sec, abs=0.003)


@pytest.mark.parametrize("name,suffix,codec", [
    ("m4a", ".m4a", "aac"), ("wav", ".wav", "pcm_s16le"), ("mp3", ".mp3", "mp3"),
    ("webm", ".opus", "opus"), ("flac", ".flac", "flac"),
])
def test_audio_only_sources_give_audio_clips(media, tmp_path, name, suffix, codec):
    origin = AudioDecoder(media[name]).info.origin_sec
    result = cut_clip(media[name], tmp_path / "clip", START, END, origin_sec=origin)
    assert result.path.suffix == suffix and codecs(result.path) == [codec]
    assert START - 0.1 < result.start_sec <= START + 1e-6  # at most a packet early
    samples, _ = decode(result.path)
    length = samples.shape[1] / RATE
    assert result.end_sec - result.start_sec - 0.002 <= length
    assert length <= result.end_sec - result.start_sec + 1024 / RATE + 0.03
    expected = source_beep(media[name]) - result.start_sec
    assert beep_in_clip(result.path) == pytest.approx(expected, abs=0.03)


def test_origin_maps_stream_time_to_the_container(media, tmp_path):
    """A .ts starts at 1.4 s and its audio carries AAC's priming; stream time still finds the
    same moment in the clip."""
    decoder = AudioDecoder(media["ts"])
    origin = decoder.info.origin_sec
    decoder.close()
    assert origin == pytest.approx(1.4, abs=1e-3)
    beep = source_beep(media["ts"])
    exact = cut_clip(media["ts"], tmp_path / "exact", START, END, origin_sec=origin, exact=True)
    assert beep_in_clip(exact.path) == pytest.approx(beep - START, abs=0.003)
    copy = cut_clip(media["ts"], tmp_path / "copy", START, END, origin_sec=origin)
    number, _, _ = first_frame(copy.path)
    assert number == 40
    with av.open(str(media["ts"])) as container:  # the muxer started the video a bit later
        video = container.streams.video[0]
        video_start = float(video.start_time * video.time_base)
    assert copy.start_sec == pytest.approx(video_start + 4.0 - origin, abs=1e-3)
    assert beep_in_clip(copy.path) == pytest.approx(beep - copy.start_sec, abs=0.03)


@pytest.mark.parametrize("exact", [False, True])
def test_b_frames_in_a_ts(media, tmp_path, exact):
    """Reordered video in a .ts: its seeks land loosely (by dts, past the keyframe)."""
    source = media["bframes.ts"]
    decoder = AudioDecoder(source)
    origin = decoder.info.origin_sec
    decoder.close()
    result = cut_clip(source, tmp_path / "clip", START, END, origin_sec=origin, exact=exact)
    number, t, duration = first_frame(result.path)
    if exact:
        assert abs(number - START * FPS) <= 1 and result.start_sec == pytest.approx(START)
    else:
        assert number == 40 and START - 2.0 < result.start_sec <= START
    assert t == 0.0
    assert duration == pytest.approx(END - result.start_sec, abs=0.15)
    expected = source_beep(source) - result.start_sec
    assert beep_in_clip(result.path) == pytest.approx(expected, abs=0.03)


def test_origin_of_a_late_starting_mkv(media, tmp_path):
    decoder = AudioDecoder(media["late.mkv"])
    origin = decoder.info.origin_sec
    decoder.close()
    assert origin == pytest.approx(5.0)
    result = cut_clip(media["late.mkv"], tmp_path / "clip", START, END, origin_sec=origin,
                      exact=True)
    assert abs(first_frame(result.path)[0] - START * FPS) <= 1
    assert beep_in_clip(result.path) == pytest.approx(BEEP - START, abs=0.003)


def test_cut_clips_names_in_order(media, tmp_path):
    told = []
    results = cut_clips(media["mp4"], tmp_path / "clips", [(8.0, 10.0), (1.0, 3.0)],
                        before=lambda k, n: told.append((k, n)))
    # Rank, then the window's start: files a person tells apart.
    assert [r.path.name for r in results] == ["highlight_01_0h00m08s.mp4",
                                              "highlight_02_0h00m01s.mp4"]
    assert told == [(1, 2), (2, 2)]
    assert [r.start_sec for r in results] == pytest.approx([8.0, 0.0])
    assert [first_frame(r.path)[0] for r in results] == [80, 0]
    assert results[0].note == ""  # 8 s is a keyframe: nothing to say


def test_failed_cuts_leave_no_file(media, tmp_path):
    out = tmp_path / "clips"
    with pytest.raises(HighlightSenseError, match="nothing to cut between 50.00 s and 55.00 s"):
        cut_clip(media["mp4"], out / "highlight_01", 50.0, 55.0)
    assert not out.exists() or list(out.iterdir()) == []
    # The rename fails at the very end (a folder holds the name): the temp file goes too.
    (out / "highlight_02.mp4").mkdir(parents=True)
    with pytest.raises(HighlightSenseError, match="could not cut highlight_02"):
        cut_clip(media["mp4"], out / "highlight_02", START, END)
    assert [p.name for p in out.iterdir()] == ["highlight_02.mp4"]
    with pytest.raises(HighlightSenseError, match="ends"):
        cut_clip(media["mp4"], out / "highlight_03", 5.0, 5.0)
    with pytest.raises(HighlightSenseError, match="no such file"):
        cut_clip(tmp_path / "gone.mp4", out / "highlight_04", 1.0, 2.0)
    assert [p.name for p in out.iterdir()] == ["highlight_02.mp4"]
