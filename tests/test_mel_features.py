"""MelFeatures: streaming equals the whole-signal answer on any chunking, and equals the seed's
librosa features (librosa.load + melspectrogram + power_to_db(ref=np.max)) on the same audio."""
import math

import librosa
import numpy as np
import pytest
import soundfile
import soxr

from harness import audio, joined, run_operator
from highlightsense.engine import grid
from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.second_pass import exact_from
from highlightsense.operators.mel_features import (MelFeatures, mel_features_offline,
                                                   slaney_mel_filterbank)

RATE = grid.AUDIO_RATE
AS_STEMS = audio(RATE, ("voice", "game"))  # run_operator's chunks: AudioChunks of both stems


def stems_signal(seconds, seed=0, loud_at=None):
    """(2 stems, 2 channels, n) float32: a tone with harmonics in noise for the voice, noise
    bursts for the game, quiet passages, a stretch of digital silence, and one loud second."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    env = np.where((t % 2.0) < 1.2, 1.0, 0.003)
    voice = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6)) * 0.2 * env
    voice += 1e-4 * rng.standard_normal(n)
    game = 0.1 * rng.standard_normal(n) * np.where((t % 0.7) < 0.1, 1.0, 0.05)
    voice[int(0.3 * n):int(0.4 * n)] = 0.0  # digital silence: the floor for a while
    if loud_at is not None:
        loud = slice(int(loud_at * RATE), int((loud_at + 1) * RATE))
        voice[loud] *= 4
        game[loud] *= 8
    stems = np.stack([np.stack([voice, 0.7 * voice]), np.stack([game, -game])])
    return stems.astype(np.float32)


def seed_features(stems):
    """The seed's step 6 on arrays: librosa.load's mono mix and soxr_hq resampling, then
    melspectrogram and power_to_db(ref=np.max) per stem, stacked."""
    out = []
    for stem in stems:
        y = librosa.resample(librosa.to_mono(stem), orig_sr=RATE, target_sr=22050,
                             res_type="soxr_hq")
        mel = librosa.feature.melspectrogram(y=y, sr=22050, n_mels=80, hop_length=512)
        out.append(librosa.power_to_db(mel, ref=np.max))
    return np.stack(out)


def test_filterbank_is_librosas():
    np.testing.assert_array_equal(slaney_mel_filterbank(),
                                  librosa.filters.mel(sr=22050, n_fft=2048, n_mels=80))


def test_resampler_stream_equals_whole_signal_with_librosas_length():
    x = np.random.default_rng(3).standard_normal((44100 * 3 + 7, 2)).astype(np.float32)
    whole = soxr.resample(x, RATE, 22050, quality="soxr_hq")
    rs = soxr.ResampleStream(RATE, 22050, 2, dtype="float32", quality="soxr_hq")
    parts = [rs.resample_chunk(x[i:i + 333]) for i in range(0, len(x), 333)]
    parts.append(rs.resample_chunk(np.zeros((0, 2), np.float32), last=True))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert len(whole) == math.ceil(len(x) / 2)  # librosa's fix_length keeps ceil(n * ratio)


@pytest.mark.parametrize("samples", [1, 100, 2047, 2048, 2049, 30_000, 3 * RATE + 5])
@pytest.mark.parametrize("chunks", [[7, 300, 2], [1023, 1024, 1025], [RATE], [10 ** 9]])
def test_streaming_equals_whole_signal(samples, chunks):
    stems = stems_signal(samples / RATE + 1e-9, seed=samples)[..., :samples]
    whole = mel_features_offline(stems)
    got = joined(run_operator(MelFeatures(), stems, chunks, make_chunk=AS_STEMS), start=0)
    assert got.shape == whole.shape == (2, 80, grid.n_frames(samples))
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-4)


def test_one_sample_chunks():
    stems = stems_signal(0.25, seed=9)
    got = joined(run_operator(MelFeatures(), stems, [1], make_chunk=AS_STEMS), start=0)
    np.testing.assert_allclose(got, mel_features_offline(stems), rtol=0, atol=1e-4)


def test_equals_librosa_once_the_reference_is_the_vods_maximum(tmp_path):
    # Loudest second near the end: the running reference is below the seed's until then.
    stems = stems_signal(12.0, seed=1, loud_at=10.0)
    seed = seed_features(stems)
    first = MelFeatures()
    single = joined(run_operator(first, stems, [4410], make_chunk=AS_STEMS), start=0)
    exact = exact_from(first.state())
    assert 10.0 * 22050 / 512 - 3 <= exact <= 11.0 * 22050 / 512  # when the loud second came
    np.testing.assert_allclose(single[..., exact:], seed[..., exact:], rtol=0, atol=1e-3)
    assert np.abs(single[..., :exact] - seed[..., :exact]).max() > 1.0  # too high a floor before
    # A second pass over the prefix with the final reference gives the seed's values throughout.
    again = MelFeatures(reference_db=first.reference_db)
    prefix = run_operator(again, stems[..., :again.samples_through(exact)], [4410],
                          make_chunk=AS_STEMS)
    redone = joined(prefix, start=0)[..., :exact]
    np.testing.assert_allclose(redone, seed[..., :exact], rtol=0, atol=1e-3)
    assert exact_from(again.state()) == 0


def test_equals_librosa_load_of_the_seeds_wav_files(tmp_path):
    stems = stems_signal(6.0, seed=2, loud_at=1.0)
    paths = [tmp_path / "vocals.wav", tmp_path / "game.wav"]
    seed = []
    for stem, path in zip(stems, paths):  # what the seed's step 6 reads, as float WAV
        soundfile.write(path, stem.T, RATE, subtype="FLOAT")
        y, _ = librosa.load(path, sr=22050, mono=True)
        mel = librosa.feature.melspectrogram(y=y, sr=22050, n_mels=80, hop_length=512)
        seed.append(librosa.power_to_db(mel, ref=np.max))
    seed = np.stack(seed)
    first = MelFeatures()
    joined(run_operator(first, stems, [RATE // 3], make_chunk=AS_STEMS), start=0)
    second = MelFeatures(reference_db=first.reference_db)
    got = joined(run_operator(second, stems, [RATE // 3], make_chunk=AS_STEMS), start=0)
    assert got.shape == seed.shape
    np.testing.assert_allclose(got, seed, rtol=0, atol=1e-3)


def test_restart_reproduces_frames_from_the_declared_context():
    stems = stems_signal(8.0, seed=4, loud_at=0.0)  # loud first: the reference settles early
    full_op = MelFeatures()
    full = joined(run_operator(full_op, stems, [5000], make_chunk=AS_STEMS), start=0)
    assert full_op.restart_frames == 3 and full_op.warmup_samples == 3072
    for frame, early in ((200, 0), (301, 0), (250, 700)):  # on the frame grid, and off it
        start = full_op.restart_sample(grid.frame_sample(frame)) - early
        op = MelFeatures(reference_db=full_op.reference_db)
        out = run_operator(op, stems[..., start:], 3000, start=start, make_chunk=AS_STEMS)
        assert out[0].start == frame  # frames without their context are not emitted
        np.testing.assert_allclose(joined(out, start=frame), full[..., frame:], rtol=0, atol=1e-3)


def test_less_context_is_not_enough():
    stems = stems_signal(4.0, seed=5, loud_at=0.0)
    full_op = MelFeatures()
    full = joined(run_operator(full_op, stems, [5000], make_chunk=AS_STEMS), start=0)
    cut = 97  # a fresh stream from frame 97's sample: its frame k is the full run's 97 + k
    fresh = MelFeatures(reference_db=full_op.reference_db)
    got = joined(run_operator(fresh, stems[..., cut * 1024:], [5000], make_chunk=AS_STEMS),
                 start=0)
    diff = [float(np.abs(got[..., k] - full[..., cut + k]).max()) for k in range(6)]
    print("restart: max |dB difference| of frames 0..5 after the cut:", diff)
    assert diff[1] > 0.1  # a quarter of its window was zeros
    assert max(diff[fresh.restart_frames:]) < 1e-3  # from restart_frames on: the same


def test_refuses_what_it_cannot_stream():
    op = MelFeatures()
    with pytest.raises(ValueError, match="stems"):
        op.process(AudioChunk(np.zeros((2, 2, 10), np.float32), RATE, 0, ("game", "voice")))
    op.process(AudioChunk(np.zeros((2, 2, 10), np.float32), RATE, 0, ("voice", "game")))
    with pytest.raises(ValueError, match="expected 10"):
        op.process(AudioChunk(np.zeros((2, 2, 10), np.float32), RATE, 11, ("voice", "game")))
    assert MelFeatures().flush() == []
