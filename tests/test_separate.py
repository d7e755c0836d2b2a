"""The separate operator against demucs.apply.apply_model on the whole signal: small random
HTDemucs models (the real class, tiny channels, 2 s segments), chunk sizes from 1 sample to
30 s, batch sizes 1 and 4, a bag of two models with different segments, restarts, the pipeline."""
import asyncio
from fractions import Fraction

import numpy as np
import pytest
import torch

from demucs.apply import BagOfModels, apply_model
from demucs.demucs import Demucs
from demucs.htdemucs import HTDemucs

from harness import joined, run_operator
from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import Operator, Source
from highlightsense.engine.pipeline import Pipeline
from highlightsense.operators.separate import Separate

RATE = 44100
SOURCES = ["drums", "bass", "other", "vocals"]
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def tiny(seed=0, segment=Fraction(2)):
    torch.manual_seed(seed)
    return HTDemucs(SOURCES, segment=segment, channels=4, depth=4, nfft=4096, t_layers=1,
                    t_heads=1, dconv_comp=2).eval()


def signal(seconds, seed=0):
    """Stereo noise under a moving envelope, with a chirp: enough structure to separate."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.37 * t) ** 2
    chirp = 0.2 * np.sin(2 * np.pi * (200 + 30 * t) * t)
    x = rng.standard_normal((2, n)) * 0.05 * envelope + chirp
    return x.astype(np.float32)


def two_stems(model, x):
    """apply_model on the whole signal, reduced as `demucs --two-stems vocals` reduces it."""
    with torch.no_grad():
        out = apply_model(model, torch.from_numpy(x)[None], shifts=0, split=True,
                          overlap=0.25)[0]
    voice = out[SOURCES.index("vocals")]
    game = torch.zeros_like(voice)
    for k, name in enumerate(SOURCES):
        if name != "vocals":
            game += out[k]
    return torch.stack([voice, game]).numpy()


def separated(chunks, start=0):
    """The chunks run_operator gave back from Separate, checked (contiguous from `start`, at
    RATE, the two stems, float32 (2, 2, n)) and joined."""
    for c in chunks:
        assert c.rate == RATE and c.stems == ("voice", "game")
        assert c.samples.dtype == np.float32 and c.samples.shape[:2] == (2, 2)
    return joined(chunks, start=start)


# 61.7 s: 41 full segments, then two shorter ones at the end (the tail apply_model pads).
LONG = (41 * 66150 + 10000) / RATE


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def long_case(model):
    x = signal(LONG)
    return x, two_stems(model, x)


@pytest.mark.parametrize("chunk_sec,batch_size", [(1.0, 1), (3.7, 1), (30.0, 1), (1.0, 4),
                                                  (13.1, 4)])
def test_equals_apply_model_on_the_whole_signal(model, long_case, chunk_sec, batch_size):
    x, want = long_case
    op = Separate(model, device="cpu", batch_size=batch_size)
    got = separated(run_operator(op, x, int(chunk_sec * RATE)))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE
    assert np.abs(want).max() > 100 * TOLERANCE  # the comparison is not between near-zeros


def test_one_sample_chunks(model):
    x = signal(5.03, seed=1)
    got = separated(run_operator(Separate(model, device="cpu"), x, 1))
    assert np.abs(got - two_stems(model, x)).max() <= TOLERANCE


def test_shorter_than_one_segment(model):
    x = signal(0.7, seed=2)
    emitted = []  # samples emitted after each chunk

    def count(op, chunk, out):
        emitted.append(sum(c.samples.shape[-1] for c in out))

    got = separated(run_operator(Separate(model, device="cpu"), x, 5000, each=count))
    assert emitted[-1] == 0  # all of it comes out at flush
    assert np.abs(got - two_stems(model, x)).max() <= TOLERANCE


def test_emits_as_soon_as_no_later_segment_covers_a_sample(model):
    """With 2 s segments every 1.5 s: nothing before 2 s of input, then every sample once the
    last segment covering it has run; input and output buffers stay within a few segments."""
    x = signal(20, seed=3)
    op = Separate(model, device="cpu")
    length, stride = 2 * RATE, 66150
    step = RATE // 2

    def check(op, chunk, out):
        received = chunk.start + step
        ran = (received - length) // stride + 1 if received >= length else 0
        assert op.emitted == ran * stride
        s = op.streams[0]
        held = s.inputs.shape[-1] + sum(p.shape[-1] for p in s.pieces)
        assert held <= 2 * length and s.out.shape[-1] <= length

    run_operator(op, x, step, each=check, flush=False)


def test_bag_of_models_with_per_source_weights():
    """As htdemucs_ft: each model weighted per source; here with different segment lengths,
    so the two streams emit at different times."""
    bag = BagOfModels([tiny(1), tiny(2, segment=Fraction(3))],
                      weights=[[1., 0., 0.5, 2.], [0., 1., 0.5, 1.]])
    x = signal(14.2, seed=4)
    got = separated(run_operator(Separate(bag, device="cpu", batch_size=2), x, int(2.9 * RATE)))
    assert np.abs(got - two_stems(bag, x)).max() <= TOLERANCE


def test_waveform_demucs_whose_segments_read_past_their_ends():
    """Demucs v2 pads each segment to its valid_length with real samples around it (apply_model's
    TensorChunk.padded), so a segment waits for a few samples more than its own."""
    torch.manual_seed(7)
    model = Demucs(SOURCES, channels=4, depth=3, segment=2, dconv_comp=2).eval()
    assert model.valid_length(2 * RATE) > 2 * RATE
    x = signal(12.3, seed=6)
    got = separated(run_operator(Separate(model, device="cpu", batch_size=3), x, int(0.9 * RATE)))
    assert np.abs(got - two_stems(model, x)).max() <= TOLERANCE


@pytest.mark.parametrize("t_sec", [23.4, LONG - 0.8])
def test_restart_gives_the_same_output_from_t_on(model, long_case, t_sec):
    """Restarting at restart_sample(T) reproduces the uninterrupted output from T on, in the
    middle of the stream and in its padded tail; restarting at T itself does not."""
    x, want = long_case
    op = Separate(model, device="cpu")
    t = int(t_sec * RATE)
    r = op.restart_sample(t)
    assert r % op.segment_grid == 0 and t - r >= op.warmup_samples
    got = separated(run_operator(op, x[:, r:], RATE, start=r), start=r)
    assert np.abs(got[..., t - r:] - want[..., t:]).max() <= TOLERANCE
    late = separated(run_operator(Separate(model, device="cpu"), x[:, t:], RATE, start=t),
                     start=t)
    assert np.abs(late[..., :RATE] - want[..., t:t + RATE]).max() > 10 * TOLERANCE


class Chunks(Source):
    name = "chunks"

    def __init__(self, x, step):
        self.x, self.step = x, step

    def __iter__(self):
        for i in range(0, self.x.shape[-1], self.step):
            yield AudioChunk(self.x[:, i:i + self.step], RATE, i)


class Collect(Operator):
    name = "collect"
    threaded = False

    def __init__(self):
        self.chunks = []

    def process(self, chunk):
        self.chunks.append(chunk)
        return []


def test_in_the_pipeline(model):
    x = signal(9.3, seed=5)
    op, sink = Separate(model, device="cpu", batch_size=2), Collect()
    assert op.threaded
    asyncio.run(Pipeline(Chunks(x, RATE // 2), [op, sink], queue_size=2).run())
    got = np.concatenate([c.samples for c in sink.chunks], axis=-1)
    assert np.abs(got - two_stems(model, x)).max() <= TOLERANCE


def test_rejects_what_it_cannot_separate(model):
    op = Separate(model, device="cpu")
    with pytest.raises(ValueError, match="44100"):
        op.process(AudioChunk(np.zeros((2, 10), np.float32), 48000, 0))
    with pytest.raises(ValueError, match=r"\(2, n\)"):
        op.process(AudioChunk(np.zeros((1, 10), np.float32), RATE, 0))
    op.process(AudioChunk(np.zeros((2, 10), np.float32), RATE, 0))
    with pytest.raises(ValueError, match="contiguous"):
        op.process(AudioChunk(np.zeros((2, 10), np.float32), RATE, 20))
    with pytest.raises(HighlightSenseError, match="--half"):
        Separate(model, device="cpu", half=True)
    assert Separate(model, device="cpu").flush() == []
