"""AudioDecoder on real files written with PyAV: samples, durations, time, damage and errors."""
import logging
import threading

import av
import numpy as np
import pytest

from highlightsense.benchmarks.media import (beeps, blocks_of, corrupt_bytes, find_beeps, tone,
                                             write_media)
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.decode import AudioDecoder, probe

RATE = 44100
AAC_FRAME = 1024


def decode_all(path, **kwargs):
    """All decoded samples, checking the chunk contract on the way; returns (samples, decoder)."""
    decoder = AudioDecoder(path, **kwargs)
    chunks = list(decoder)
    expected_start = 0
    for chunk in chunks:
        assert chunk.rate == RATE
        assert chunk.start == expected_start  # contiguous
        assert chunk.samples.dtype == np.float32 and chunk.samples.shape[0] == 2
        assert chunk.samples.flags.c_contiguous
        expected_start = chunk.end
    return np.concatenate([c.samples for c in chunks], axis=1), decoder


def peak_hz(samples, rate=RATE):
    spectrum = np.abs(np.fft.rfft(samples[0, :rate]))
    return np.argmax(spectrum) * rate / min(rate, samples.shape[1])


def test_wav_decodes_to_the_written_samples(tmp_path):
    rng = np.random.default_rng(1)
    signal = rng.uniform(-0.9, 0.9, (2, 3 * RATE + 123)).astype(np.float32)
    path = write_media(tmp_path / "noise.wav", blocks_of(signal, 10000))
    decoded, decoder = decode_all(path, chunk_sec=0.5)
    assert decoded.shape == signal.shape
    np.testing.assert_allclose(decoded, signal, atol=1e-4)  # pcm_s16le quantisation only
    assert decoder.info.codec == "pcm_s16le" and decoder.info.origin_sec == 0.0
    assert decoder.info.duration_sec == pytest.approx(signal.shape[1] / RATE, abs=1e-3)


def test_chunk_sec_does_not_change_the_output(tmp_path):
    path = write_media(tmp_path / "a.mp4", beeps(5.0, [1.0, 3.3]), video=True)
    outputs = []
    for chunk_sec in (0.37, 1.0, 10.0):
        decoder = AudioDecoder(path, chunk_sec=chunk_sec)
        chunks = list(decoder)
        assert all(c.samples.shape[1] == round(chunk_sec * RATE) for c in chunks[:-1])
        outputs.append(np.concatenate([c.samples for c in chunks], axis=1))
    assert np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[0], outputs[2])


@pytest.mark.parametrize("ext,rate,channels", [
    ("wav", 44100, 1), ("wav", 8000, 2), ("wav", 48000, 2), ("wav", 96000, 2),
    ("m4a", 8000, 2), ("m4a", 48000, 1), ("m4a", 96000, 6), ("flac", 48000, 6),
])
def test_rates_and_layouts_become_stereo_44k(tmp_path, ext, rate, channels):
    path = write_media(tmp_path / f"t.{ext}", tone(2.0, 440, rate=rate, channels=channels),
                       rate=rate, channels=channels)
    decoded, decoder = decode_all(path)
    assert (decoder.input_rate, decoder.input_channels) == (rate, channels)
    frame = 0 if ext in ("wav", "flac") else AAC_FRAME / rate  # AAC pads its last frame
    assert -0.002 <= decoded.shape[1] / RATE - 2.0 <= frame + 0.002
    assert peak_hz(decoded) == pytest.approx(440, abs=2)
    if channels == 1:  # mono is copied to both channels at its own level
        np.testing.assert_array_equal(decoded[0], decoded[1])
    if channels < 6:
        rms = np.sqrt(np.mean(decoded[:, RATE // 2:RATE] ** 2))
        assert rms * np.sqrt(2) == pytest.approx(0.5, abs=0.01)
    else:
        assert np.abs(decoded).max() > 0.3


@pytest.mark.parametrize("ext,video", [
    ("mp4", True), ("mkv", True), ("ts", True), ("mov", True), ("m4a", False),
    ("flac", False), ("mp3", False), ("webm", False), ("opus", False), ("ogg", False),
])
def test_containers_decode_with_the_right_duration(tmp_path, ext, video):
    path = write_media(tmp_path / f"c.{ext}", tone(3.0, 440), video=video)
    decoded, decoder = decode_all(path)
    assert decoder.info.has_video == video
    # AAC pads its last frame; in .ts it also keeps the encoder's 1024 priming samples.
    slack = {"ts": 2 * AAC_FRAME / RATE}.get(ext, AAC_FRAME / RATE)
    assert -0.002 <= decoded.shape[1] / RATE - 3.0 <= slack + 0.002
    assert decoder.info.duration_sec == pytest.approx(3.0, abs=0.05)
    assert peak_hz(decoded) == pytest.approx(440, abs=2)


def test_second_audio_stream_on_request(tmp_path):
    path = write_media(tmp_path / "two.mkv", tone(2.0, 440), more_audio=[tone(2.0, 1000)])
    first, decoder = decode_all(path)
    assert len(decoder.audio_streams) == 2
    second, _ = decode_all(path, stream_index=1)
    assert peak_hz(first) == pytest.approx(440, abs=2)
    assert peak_hz(second) == pytest.approx(1000, abs=2)
    with pytest.raises(HighlightSenseError, match=r"no audio stream 2; .*0: aac.*1: aac"):
        AudioDecoder(path, stream_index=2)


def silent_runs(x, min_len=1000):
    """(start, end) of runs of exact zeros at least min_len long."""
    zero = np.concatenate([[False], x[0] == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len]


def test_missing_packets_become_silence_at_the_true_time(tmp_path, caplog):
    whole = write_media(tmp_path / "whole.mp4", tone(4.0))
    holed = write_media(tmp_path / "holed.mp4", tone(4.0), drop=[(1.5, 2.0)])
    reference, _ = decode_all(whole)
    with caplog.at_level(logging.WARNING, logger="highlightsense"):
        decoded, decoder = decode_all(holed)
    assert decoded.shape == reference.shape  # the timeline keeps its length
    # AAC packets k*1024: 65 (1.509 s) to 86 were dropped, 87 comes back at its own time.
    assert silent_runs(decoded) == [(65 * AAC_FRAME, 87 * AAC_FRAME)]
    assert decoder.info.gaps_filled_sec == pytest.approx(22 * AAC_FRAME / RATE)
    np.testing.assert_array_equal(decoded[:, :65 * AAC_FRAME], reference[:, :65 * AAC_FRAME])
    np.testing.assert_allclose(decoded[:, 88 * AAC_FRAME:], reference[:, 88 * AAC_FRAME:],
                               atol=1e-3)
    assert [r.getMessage() for r in caplog.records] == [
        f"{holed}: 0.511 s of audio missing at 00:00:01, filled with silence"]


def test_long_gap_in_mkv_is_filled_in_pieces(tmp_path):
    path = write_media(tmp_path / "holed.mkv", tone(20.0), drop=[(2.0, 17.0)])
    decoded, decoder = decode_all(path, chunk_sec=1.0)
    assert decoded.shape[1] / RATE == pytest.approx(20.0, abs=0.03)
    (start, end), = silent_runs(decoded)
    assert start / RATE == pytest.approx(2.0, abs=0.03)  # matroska keeps milliseconds
    assert end / RATE == pytest.approx(17.0, abs=0.03)


def test_corrupt_middle_is_skipped_with_one_warning(tmp_path, caplog):
    clean = write_media(tmp_path / "clean.mp4", tone(20.0), video=True)
    bad = corrupt_bytes(clean, tmp_path / "bad.mp4", offset_frac=0.5, n_bytes=5000, seed=2)
    with caplog.at_level(logging.WARNING, logger="highlightsense"):
        decoded, decoder = decode_all(bad)
    assert decoder.info.corrupt_packets > 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "corrupt audio packet" in messages[0] and "at 00:00:1" in messages[0]
    assert decoded.shape[1] / RATE == pytest.approx(20.0, abs=AAC_FRAME / RATE + 0.002)


@pytest.mark.parametrize("ext", ["mkv", "ts", "webm", "mp3"])
def test_corrupt_middle_survives_other_containers(tmp_path, ext):
    clean = write_media(tmp_path / f"clean.{ext}", tone(20.0), video=ext in ("mkv", "ts"))
    bad = corrupt_bytes(clean, tmp_path / f"bad.{ext}", offset_frac=0.5, n_bytes=3000, seed=5)
    decoded, decoder = decode_all(bad)
    # Raw mp3 has no timestamps: what is lost there shortens the file.
    assert decoded.shape[1] / RATE == pytest.approx(20.0, abs=0.5 if ext == "mp3" else 0.05)
    assert decoder.info.corrupt_packets > 0 or decoder.info.gaps_filled_sec > 0


def test_errors_say_what_is_wrong(tmp_path):
    cases = []
    missing = tmp_path / "missing.mp4"
    cases.append((missing, f"no such file: {missing}"))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    cases.append((text, f"{text} is not a media file FFmpeg can read ("))
    video_only = write_media(tmp_path / "silent.mp4", [], audio=False, video=True, video_sec=2)
    cases.append((video_only, f"{video_only} has no audio stream; give a file with audio"))
    empty = write_media(tmp_path / "empty.wav", [])
    cases.append((empty, f"{empty} contains no audio samples"))
    for path, message in cases:
        with pytest.raises(HighlightSenseError) as info:
            AudioDecoder(path)  # on open, before any work
        assert str(info.value).startswith(message)
        assert "\n" not in str(info.value)


def test_origin_is_the_container_time_of_the_first_sample(tmp_path):
    # Files from FFmpeg's mpegts muxer start at 1.4 s (write_media muxes like the CLI).
    ts = write_media(tmp_path / "a.ts", beeps(6.0, [3.0]), video=True)
    decoded, decoder = decode_all(ts)
    assert decoder.info.origin_sec == pytest.approx(1.4, abs=1e-3)
    # .ts keeps AAC's 1024 priming samples, so the beep comes 1024 samples late in stream time.
    assert find_beeps(decoded) == pytest.approx([3.0 + AAC_FRAME / RATE], abs=0.002)
    mkv = write_media(tmp_path / "b.mkv", beeps(6.0, [3.0]), start_sec=5.0)
    decoded, decoder = decode_all(mkv)
    assert decoder.info.origin_sec == pytest.approx(5.0)
    assert find_beeps(decoded) == pytest.approx([3.0], abs=0.002)


def test_attributes_probe_and_close(tmp_path):
    path = write_media(tmp_path / "a.mkv", tone(2.0, channels=6), channels=6, video=True)
    decoder = AudioDecoder(path)
    assert (decoder.info.codec, decoder.input_rate, decoder.input_channels) == ("aac", 44100, 6)
    assert decoder.info.has_video and decoder.info.duration_sec == pytest.approx(2.0, abs=0.05)
    assert decoder.info.origin_sec == 0.0
    decoder.close()  # closing before iterating is fine
    info = probe(path)
    assert [s["type"] for s in info["streams"]] == ["audio", "video"]
    assert info["streams"][0]["channels"] == 6
    assert info["duration_sec"] == pytest.approx(2.0, abs=0.05)
    decoder = AudioDecoder(path)
    list(decoder)
    assert decoder.container is None  # closed when iteration ended
    with pytest.raises(RuntimeError):
        list(decoder)


def test_close_while_iterating_ends_the_stream(tmp_path):
    path = write_media(tmp_path / "a.m4a", tone(5.0))
    decoder = AudioDecoder(path, chunk_sec=0.5)
    chunks = iter(decoder)
    first = next(chunks)
    thread = threading.Thread(target=decoder.close)  # as the pipeline does when it stops
    thread.start()
    thread.join()
    rest = list(chunks)  # what was already decoded, then the end
    assert first.start == 0 and sum(c.samples.shape[1] for c in rest) < 5 * RATE


def test_pts_of_first_packet_not_zero_in_mp3(tmp_path):
    # The mp3 demuxer skips the encoder delay and starts its clock after it.
    path = write_media(tmp_path / "a.mp3", beeps(4.0, [2.0]))
    decoded, decoder = decode_all(path)
    assert decoder.info.origin_sec > 0
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert decoder.info.origin_sec == pytest.approx(float(stream.start_time * stream.time_base))
    assert find_beeps(decoded) == pytest.approx([2.0], abs=0.002)


def test_tags_that_are_not_utf8_read_as_replacement_characters():
    """PyAV 19 reads tags with surrogateescape (earlier ones as open_media asks: "replace"):
    either way a tag reaches messages and JSON as printable text."""
    from types import SimpleNamespace

    from highlightsense.operators.sources.decode import tag

    stream = SimpleNamespace(metadata={"language": "e\udce2n", "title": "plain"})
    assert tag(stream, "language") == "e\ufffdn"
    assert tag(stream, "title") == "plain" and tag(stream, "missing") is None
    assert tag(stream, "language").encode("utf-8")  # printable: the surrogate would raise
