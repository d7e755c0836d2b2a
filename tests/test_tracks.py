"""The recording's own voice and game tracks instead of Demucs: multi-track files written with PyAV
(mix = voice + game, the microphone, the game; known moments), decoded in one pass, scored, resumed,
and the mistakes a user can make with the flags."""
import csv
import json
import logging

import av
import numpy as np
import pytest

from harness import audio, joined, run_operator
from highlightsense.benchmarks.bench_support import write_small_models
from highlightsense.benchmarks.tracks_bench import TrackedStream, obs_recording, write_tracks
from highlightsense.engine.chunks import AudioChunk, FrameChunk
from highlightsense.engine.cli import main
from highlightsense.engine.config import load_config
from highlightsense.engine.detect import detect
from highlightsense.engine.observer import RunObserver
from highlightsense.engine.passes import build_scorer
from highlightsense.engine.resume import RECORD_NAME
from highlightsense.operators.mel_features import MelFeatures, mel_features_offline
from highlightsense.operators.separate import STEMS
from highlightsense.operators.sources.decode import AudioDecoder
from highlightsense.operators.sources.tracks import TRACK_STEMS, TrackChoice, TrackDecoder
from highlightsense.operators.track_stems import TrackStems
from highlightsense.operators.windows import Windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RATE = 44100
MOMENTS = [(9.0, 13.0), (27.0, 31.0)]
# Short windows so that 40 s of media make 16 of them.
WINDOWS = "window_sec: 10\nstride_sec: 2\nthreshold_percentile: 80\nprogress_every_sec: 0.05\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("tracks")


@pytest.fixture(scope="module")
def obs(folder):
    """An OBS-like recording, FLAC in Matroska: mix, "Mic/Aux", "Desktop Audio"."""
    stream = TrackedStream(40, MOMENTS, seed=1)
    return obs_recording(folder / "obs.mkv", stream, codec="flac"), stream


@pytest.fixture(scope="module")
def streams(obs):
    """Each stream of the OBS recording decoded on its own (AudioDecoder)."""
    return [decode(obs[0], i) for i in range(3)]


@pytest.fixture(scope="module")
def models(folder):
    return write_small_models(folder)  # (separator, checkpoint)


@pytest.fixture(scope="module")
def windows_config(folder):
    path = folder / "windows.yaml"
    path.write_text(WINDOWS)
    return path


def decode(path, index):
    return np.concatenate([c.samples for c in AudioDecoder(str(path), stream_index=index)], 1)


def scores(out_dir):
    with open(out_dir / "raw_window_scores.csv", newline="") as f:
        return np.array([float(r["confidence"]) for r in csv.DictReader(f)])


# -- the decoder ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_sec", [0.03, 0.37, 7.0])
def test_one_pass_gives_each_streams_own_decode_at_any_chunk_size(obs, streams, chunk_sec):
    path, stream = obs
    decoder = TrackDecoder(path, TrackChoice(voice=(1,), game=(2,), mix=(0,)),
                           chunk_sec=chunk_sec)
    chunks = list(decoder)
    assert {c.stems for c in chunks} == {TRACK_STEMS}
    got = joined(chunks, start=0)
    for stem, index in zip(TRACK_STEMS, (1, 2, 0)):
        np.testing.assert_array_equal(got[TRACK_STEMS.index(stem)], streams[index])
    voice, game = stream.stems(0, stream.n)  # FLAC of 16-bit samples: within a step of 1/32768
    np.testing.assert_allclose(got[0], voice, atol=4e-5)
    np.testing.assert_allclose(got[1], game, atol=4e-5)
    assert decoder.info.duration_sec == pytest.approx(40.0, abs=0.01)


def test_sums_and_the_mix_alone(obs, streams):
    path, _ = obs
    chunks = list(TrackDecoder(path, TrackChoice((1,), (0, 2), (1, 2)), stems=("mix",)))
    mix = joined(chunks, start=0)
    assert all(c.stems == () and c.samples.shape[0] == 2 for c in chunks)  # a plain mix
    np.testing.assert_array_equal(mix, streams[1] + streams[2])
    game = joined(list(TrackDecoder(path, TrackChoice((1,), (0, 2), (0,)))))[1]
    np.testing.assert_array_equal(game, streams[0] + streams[2])
    alone = TrackDecoder(path, TrackChoice((1,), (2,), (0,)), stems=("mix",))
    assert [lane.index for lane in alone.lanes] == [0]  # the mix alone decodes nothing else
    np.testing.assert_array_equal(joined(list(alone)), streams[0])


def test_start_offsets_rates_a_hole_and_an_early_end(folder, caplog):
    """Voice starts 0.5 s late and ends 1.5 s before the rest; the game is at 48 kHz, starts at
    0.25 s and has a hole; stream time 0 is the mix's first sample."""
    voice = TrackedStream(4, [(1.0, 2.0)], seed=2)
    game = TrackedStream(5.75 * 48000 / RATE, [(1.0, 2.0)], seed=3)  # 5.75 s at 48 kHz
    path = write_tracks(folder / "offsets.mkv", [
        {"blocks": TrackedStream(6, seed=4).blocks("mix")},
        {"blocks": voice.blocks("voice"), "start_sec": 0.5},
        {"blocks": game.blocks("game"), "rate": 48000, "start_sec": 0.25,
         "drop": [(2.0, 2.5)]}], codec="flac")
    with caplog.at_level(logging.INFO, logger="highlightsense"):
        decoder = TrackDecoder(path, TrackChoice((1,), (2,), (0,)), chunk_sec=0.3)
        got = joined(list(decoder), start=0)
    assert decoder.info.origin_sec == 0.0
    lead = RATE // 2  # Matroska's millisecond timestamps place 0.5 s exactly
    alone = decode(path, 1)  # the voice stream decoded on its own
    assert not got[0][:, :lead].any()
    np.testing.assert_array_equal(got[0][:, lead:lead + alone.shape[1]], alone)
    assert not got[0][:, lead + alone.shape[1]:].any()
    assert got.shape[-1] == decode(path, 0).shape[1] == 6 * RATE
    g = got[1]
    assert not g[:, :RATE // 4].any() and np.abs(g[:, RATE // 4 + 2000:RATE]).max() > 0.01
    # The hole: its FLAC frames (0.096 s) starting in [2.0, 2.5) s of its own time were left
    # out, [2.016, 2.592) s, which the 0.25-s start puts at [2.266, 2.842) s.
    assert np.abs(g[:, int(2.2 * RATE):int(2.26 * RATE)]).max() > 0.01
    assert not g[:, int(2.27 * RATE):int(2.84 * RATE)].any()
    assert np.abs(g[:, int(2.85 * RATE):int(3 * RATE)]).max() > 0.01
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("audio stream 2" in m and "missing at 00:00:02" in m for m in messages), messages
    ends = [m for m in messages if "audio stream 1 ends" in m]
    assert len(ends) == 1 and "4.5 s to 6.0 s" in ends[0] and "1.5 s before" in ends[0]
    assert decoder.info.gaps_filled_sec == pytest.approx(0.576 + 1.5, abs=0.01)


def test_a_restart_gives_the_uninterrupted_samples(obs):
    path, _ = obs
    choice = TrackChoice((1,), (2,), (0,))
    whole = joined(list(TrackDecoder(path, choice)))
    for start in (12345, 20 * RATE + 7):
        again = list(TrackDecoder(path, choice, chunk_sec=0.5, start_sample=start))
        np.testing.assert_array_equal(joined(again, start=start), whole[..., start:])


def test_track_stems_streams_as_offline_at_any_chunk_size(obs):
    path, _ = obs
    whole = joined(list(TrackDecoder(path, TrackChoice((1,), (2,), (0,)))))[..., :3 * RATE]
    for sizes in ([1, 7, 4096], [RATE * 2], [0, 333]):
        out = run_operator(TrackStems(), whole, sizes, start=5,
                           make_chunk=audio(stems=TRACK_STEMS))
        assert all(c.stems == STEMS for c in out)
        np.testing.assert_array_equal(joined(out, start=5), whole[:2])
    stage = TrackStems()
    assert stage.lookahead_samples == 0 and stage.restart_sample(777) == 777
    with pytest.raises(ValueError, match="a plain mix"):
        stage.process(AudioChunk(whole[2], RATE, 0))


# -- detect with tracks -----------------------------------------------------------------------


def offline_scores(streams, checkpoint, windows_config):
    """The features of the stems decoded stream by stream, under the whole stream's dB
    reference (as the seed's power_to_db(ref=max)), windowed and scored by the CRNN scorer."""
    stems = np.stack([streams[1], streams[2]])
    features = MelFeatures()
    run_operator(features, stems, RATE * 60, make_chunk=audio(stems=STEMS))
    frames = mel_features_offline(stems, reference_db=features.reference_db)
    cfg = load_config(str(windows_config), {"model": str(checkpoint), "device": "cpu"})
    scorer = build_scorer(cfg)
    batches = run_operator(Windows.for_scorer(cfg, scorer), frames, 10 ** 6,
                           make_chunk=lambda piece, start: FrameChunk(piece, start))
    return np.concatenate([scorer.score(b).confidence for b in batches])


@pytest.fixture(scope="module")
def tracks_run(obs, models, windows_config, tmp_path_factory):
    path, _ = obs
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["detect", str(path), "--model", str(models[1]), "--device", "cpu",
                 "--voice-track", "1", "--game-track", "2", "--config", str(windows_config),
                 "--out", str(out), "-q"])
    assert code == 0
    return out


def test_scores_with_tracks_equal_offline_features_and_crnn(streams, models, windows_config,
                                                           tracks_run):
    got, expected = scores(tracks_run), offline_scores(streams, models[1], windows_config)
    assert len(got) == len(expected) == 16
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    summary = json.loads((tracks_run / "highlights.json").read_text())
    assert summary["voice_track"] == "1" and summary["game_track"] == "2"
    assert summary["separator"] is None  # no Demucs


def test_clips_are_cut_from_the_mix(streams, tracks_run):
    with open(tracks_run / "final_clips_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    clip = tracks_run / rows[0]["clip_path"]
    with av.open(str(clip)) as c:
        assert len(c.streams.audio) == 1
    got = decode(clip, 0)[0]
    start = round(float(rows[0]["clip_start_sec"]) * RATE)

    def found_in(index):
        """Whether the clip's samples are the stream's, from within 1024 samples of its start
        (a FLAC cut lands a few samples off the start it records)."""
        source = streams[index][0]
        for at in range(start - 1024, start + 1025):
            if np.array_equal(got[:2048], source[at:at + 2048]):
                return np.array_equal(got, source[at:at + len(got)])
        return False

    assert [found_in(i) for i in (0, 1, 2)] == [True, False, False]


def test_tracks_auto_picks_by_title_and_resume_holds_the_indexes(obs, models, windows_config,
                                                                 tracks_run, tmp_path, capsys,
                                                                 caplog, monkeypatch):
    """--tracks auto picks streams 1 and 2 by their titles; interrupted after a progress record,
    the same command resumes to the uninterrupted scores; other tracks are refused."""
    path, _ = obs
    out = tmp_path / "auto"
    cfg = load_config(str(windows_config), {"model": str(models[1]), "device": "cpu",
                                            "tracks": "auto", "clips": False})

    class Stopped(Exception):
        pass

    class Interrupt(RunObserver):  # the run stops right after a progress record is written
        def record_saved(self, record):
            if record.phase == 1 and len(record.windows) >= 5:
                raise Stopped

    log = logging.getLogger("highlightsense")  # what the CLI's one-line handler would print
    monkeypatch.setattr(log, "handlers", [caplog.handler])
    caplog.set_level(logging.INFO, logger="highlightsense")
    with pytest.raises(Stopped):
        detect(str(path), out, cfg, show_progress=False, observer=Interrupt())
    assert "voice from audio stream 1, game from 2 (by their titles)" in caplog.text
    record = json.loads((out / RECORD_NAME).read_text())
    scoring = record["fingerprint"]["scoring"]
    assert (scoring["voice_track"], scoring["game_track"]) == ("1", "2")  # not "auto"
    # Mid-pass as a rule; on a loaded machine the first record with 5 windows can be the pass's
    # last (all 16): the resume below must hold the indexes either way.
    assert 5 <= len(record["windows"]) <= 16

    code = main(["detect", str(path), "--model", str(models[1]), "--device", "cpu", "--out",
                 str(out), "--voice-track", "2", "--game-track", "1", "--config",
                 str(windows_config), "--no-clips", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "game_track" in err and "voice_track" in err

    result = detect(str(path), out, cfg, show_progress=False)
    assert json.loads((out / "highlights.json").read_text())["resumes"]
    assert len(result.windows) == 16
    # The decoded samples are the uninterrupted ones (test_a_restart_gives_...); the features
    # and the CRNN restart within 1e-5, as on the Demucs path (about 1e-8 here).
    np.testing.assert_allclose(scores(out), scores(tracks_run), rtol=0, atol=1e-5)


def test_tracks_auto_without_titles_separates_with_demucs(folder, models, windows_config,
                                                          capsys, tmp_path):
    stream = TrackedStream(6, [(3.0, 5.0)], seed=5)
    path = write_tracks(folder / "untitled.mkv", [{"blocks": stream.blocks(w)} for w in
                                                  ("mix", "voice", "game")], codec="flac")
    code = main(["detect", str(path), "--model", str(models[1]), "--separator",
                 str(models[0]), "--device", "cpu", "--tracks", "auto", "--config",
                 str(windows_config), "--no-clips", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "--tracks auto: no stream titles name" in err and "separating with Demucs" in err
    summary = json.loads((tmp_path / "o" / "highlights.json").read_text())
    assert summary["separator"] == str(models[0])
    assert summary["voice_track"] is None


def test_a_file_without_a_mix_track_listens_to_voice_plus_game(folder, capsys, tmp_path):
    """Loudness scorer: its mix is voice + game when stream 0 is itself a stem."""
    stream = TrackedStream(24, MOMENTS[:1], seed=6)
    path = write_tracks(folder / "nomix.mkv", [
        {"blocks": stream.blocks("voice"), "title": "Mic"},
        {"blocks": stream.blocks("game"), "title": "Game"}], codec="flac")
    summed = write_tracks(folder / "summed.mkv", [{"blocks": stream.blocks("mix")}],
                          codec="flac")
    config = folder / "loud.yaml"
    config.write_text(WINDOWS)
    assert main(["detect", str(path), "--tracks", "auto", "--config", str(config),
                 "--no-clips", "--out", str(tmp_path / "a"), "-q"]) == 0
    assert main(["detect", str(summed), "--config", str(config), "--no-clips",
                 "--out", str(tmp_path / "b"), "-q"]) == 0
    # FLAC keeps each stem to 16 bits, so their sum differs from the summed file's by a step.
    np.testing.assert_allclose(scores(tmp_path / "a"), scores(tmp_path / "b"), atol=1e-3)


# -- mistakes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, says", [
    (["--voice-track", "3", "--game-track", "2"], "no audio stream 3; its audio streams are 0: flac"),
    (["--voice-track", "1", "--game-track", "2+7"], "(--game-track counts audio streams only"),
    (["--voice-track", "1", "--game-track", "1"], "audio stream 1 is given as both"),
    (["--voice-track", "1+x", "--game-track", "2"], "is not an audio stream index"),
    (["--voice-track", "1"], "give both --voice-track and --game-track"),
    (["--tracks", "auto", "--voice-track", "1", "--game-track", "2"], "not both"),
    (["--voice-track", "1", "--game-track", "2", "--max-duration", "0:20"],
     "over --max-duration 0:20"),
])
def test_bad_track_settings_are_one_line(obs, models, tmp_path, capsys, flags, says):
    path, _ = obs
    code = main(["detect", str(path), "--model", str(models[1]), "--device", "cpu",
                 "--out", str(tmp_path / "o"), "-q", *flags])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert says in err, err
    assert not (tmp_path / "o").exists()


def test_tracks_of_a_url_are_refused_in_one_line(models, tmp_path, capsys):
    code = main(["detect", "https://127.0.0.1:9/vod.m3u8", "--model", str(models[1]),
                 "--voice-track", "1", "--game-track", "2", "--out", str(tmp_path / "o"),
                 "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "local file" in err, err


def test_a_track_that_stops_early_does_not_hold_up_the_others(folder):
    """The voice stops at 2 s of 16: the others go on being handed out, LAG_SEC behind at most,
    instead of waiting in memory for the end of the file."""
    from highlightsense.operators.sources.tracks import LAG_SEC

    stream = TrackedStream(16, seed=7)
    path = write_tracks(folder / "early.mkv", [
        {"blocks": stream.blocks("mix")},
        {"blocks": TrackedStream(2, seed=8).blocks("voice")},
        {"blocks": stream.blocks("game")}], codec="flac")
    decoder = TrackDecoder(path, TrackChoice((1,), (2,), (0,)), chunk_sec=0.5)
    held, chunks = [], []
    for chunk in decoder:
        chunks.append(chunk)
        held.append(max(sum(p.shape[1] for p in lane.pieces) for lane in decoder.lanes))
    assert max(held) < (LAG_SEC + 1) * RATE  # without the stall, 14 s would wait at 16 s
    assert len(chunks) == 32
    got = joined(chunks, start=0)
    assert np.abs(got[0][:, :RATE]).max() > 0.01 and not got[0][:, 2 * RATE + 100:].any()
