"""What the GPU suite makes and reads on the GPU machine, checked here on the CPU: the long
input repeated by stream copy, the CRNN sweep's figures and the report's tables and targets."""
import json

import numpy as np

from highlightsense.benchmarks import crnn_throughput, gpu_report
from highlightsense.benchmarks.long_input import repeat_media
from highlightsense.benchmarks.media import write_media
from highlightsense.operators.sources.decode import AudioDecoder


def _decoded(path) -> np.ndarray:
    return np.concatenate([c.samples for c in AudioDecoder(str(path))], axis=1)


def test_the_long_input_is_the_piece_again_and_again(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [(0.1 * rng.standard_normal((2, 44100))).astype(np.float32) for _ in range(2)]
    piece = write_media(tmp_path / "piece.mkv", blocks, audio_codec="flac")  # lossless
    long = repeat_media(piece, tmp_path / "long.mkv", 3)
    once, thrice = _decoded(piece), _decoded(long)
    assert thrice.shape[1] == 3 * once.shape[1]
    np.testing.assert_array_equal(thrice, np.tile(once, 3))  # no gap, no overlap at the joins
    assert not list(tmp_path.glob(".*.part"))


def test_an_aac_long_input_runs_on_without_gaps(tmp_path):
    rng = np.random.default_rng(1)
    blocks = [(0.1 * rng.standard_normal((2, 44100))).astype(np.float32) for _ in range(3)]
    piece = write_media(tmp_path / "piece.m4a", blocks)
    long = repeat_media(piece, tmp_path / "long.m4a", 4)
    decoder = AudioDecoder(str(long))
    samples = sum(c.samples.shape[1] for c in decoder)
    # Each copy keeps its encoder priming (one AAC frame, 23 ms, that the piece's edit list
    # hides once at the start): at most a frame more per copy, never a gap.
    assert 0 <= samples - 4 * _decoded(piece).shape[1] <= 4 * 1024
    assert decoder.info.gaps_filled_sec == 0


def test_the_crnn_sweep_writes_windows_per_second_per_batch(tmp_path, capsys):
    out = tmp_path / "crnn.json"
    crnn_throughput.main(["--device", "cpu", "--windows", "2", "--rounds", "1",
                          "--batch-size", "2", "--size", "small", "--json-out", str(out)])
    rates = json.loads(out.read_text())["windows_per_sec"]
    assert set(rates) == {"1", "2"} and all(r > 0 for r in rates.values())
    assert "batched (2)" in capsys.readouterr().out


def _bench(path, **fields):
    path.write_text(json.dumps({"engine": fields}))


def test_the_report_picks_the_best_and_checks_the_targets(tmp_path):
    _bench(tmp_path / "sep_b1_fp32.json", x_realtime=310.0, gpu_peak_memory_mb=900.0)
    _bench(tmp_path / "sep_b32_half.json", x_realtime=1250.0, gpu_peak_memory_mb=4100.0)
    _bench(tmp_path / "sep_b8_half.json", x_realtime=980.0, gpu_peak_memory_mb=1500.0)
    (tmp_path / "crnn.json").write_text(json.dumps(
        {"device": "GPU", "size": "full", "windows_per_sec": {"1": 90.0, "256": 1800.0}}))
    scores = np.random.default_rng(0).random(50)
    _bench(tmp_path / "fid_fp32.json", confidences=scores.tolist(), top=[3, 7], audio_sec=600)
    _bench(tmp_path / "fid_half.json", confidences=(scores + 1e-4).tolist(), top=[3, 7],
           audio_sec=600)
    _bench(tmp_path / "e2e.json", audio_sec=7200.0, wall_sec=20.0, x_realtime=360.0,
           first_window_sec=6.5, separator_batch=32, half=True)
    text = gpu_report.report(tmp_path)
    assert "best: batch 32 half, 1250.0x realtime: meets the target 1000x" in text
    assert "best: batch 256, 1800 windows/s: MISSES the target 2000" in text
    assert "max |dp| 1.00e-04; selection the same" in text
    assert "360.0x realtime: meets" in text and "first score 6.50 s: MISSES" in text
    assert gpu_report.main([str(tmp_path)]) == 0
    assert (tmp_path / "report.txt").read_text() == text


def test_fidelity_says_when_the_selection_differs():
    f = gpu_report.fidelity({"confidences": [0.1, 0.5, 0.9], "top": [2, 1]},
                            {"confidences": [0.1, 0.52, 0.88], "top": [2, 0]})
    assert not f["same_selection"]
    assert abs(f["max_abs_dp"] - 0.02) < 1e-12
