"""The CRNN against the seed notebook's own classes, and the scorer: batching, masks, peaks."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from highlightsense.engine import grid
from highlightsense.engine.chunks import WindowBatch
from highlightsense.model.crnn import CrnnConfig, HighlightSenseModel
from highlightsense.model.crnn_scorer import CrnnScorer

SMALL = CrnnConfig(cnn_channels=(4, 8, 8, 16), rnn_hidden=12, att_dim=6, classifier_hidden=10)


# The inference notebook's model, as written there (Final_Inference_Script, step 7): the
# reference our HighlightSenseModel must equal.
class SeedConvBlock(nn.Module):
    def __init__(self, inc, outc, pool=(2, 2), first_layer=False):
        super().__init__()
        self.conv = nn.Conv2d(inc, outc, 3, padding=1)
        self.bn = nn.InstanceNorm2d(outc, affine=True) if first_layer else nn.BatchNorm2d(outc)
        self.pool = nn.MaxPool2d(pool)

    def forward(self, x):
        return self.pool(F.relu(self.bn(self.conv(x))))


class SeedAttention(nn.Module):
    def __init__(self, dim, att_dim):
        super().__init__()
        self.W = nn.Linear(dim, att_dim)
        self.V = nn.Linear(att_dim, 1, bias=False)

    def forward(self, x, mask=None):
        e = torch.tanh(self.W(x))
        s = self.V(e).squeeze(-1)
        if mask is not None:
            s = s.masked_fill(mask == 0, float("-inf"))
        w = F.softmax(s, dim=1)
        return torch.bmm(w.unsqueeze(1), x).squeeze(1), w


class SeedModel(nn.Module):
    def __init__(self, n_mels=80, cnn_channels=[32, 64, 128, 256], rnn_hidden=256, rnn_layers=2,
                 rnn_dropout=0.3, att_dim=128, dropout=0.5):
        super().__init__()
        layers, in_ch = [], 2
        for i, out_ch in enumerate(cnn_channels):
            layers.append(SeedConvBlock(in_ch, out_ch, (2, 2) if i < 3 else (1, 2), i == 0))
            in_ch = out_ch
        self.cnn = nn.Sequential(*layers)
        self.rnn = nn.GRU(input_size=cnn_channels[-1] * (n_mels // 8), hidden_size=rnn_hidden,
                          num_layers=rnn_layers, batch_first=True, bidirectional=True,
                          dropout=rnn_dropout if rnn_layers > 1 else 0)
        self.attention = SeedAttention(rnn_hidden * 2, att_dim)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(rnn_hidden * 2, 128),
                                        nn.ReLU(), nn.Dropout(dropout / 2), nn.Linear(128, 1))

    def forward(self, x, mask=None):
        B = x.size(0)
        c = self.cnn(x)
        c = c.permute(0, 3, 1, 2)
        c = c.reshape(B, c.size(1), -1)
        m = mask[:, ::16][:, :c.size(1)] if mask is not None else None
        r, _ = self.rnn(c)
        ctx, att = self.attention(r, m)
        return self.classifier(ctx), att


def test_state_dict_names_and_shapes_are_the_seeds():
    ours, seed = HighlightSenseModel().state_dict(), SeedModel().state_dict()
    assert list(ours) == list(seed)
    assert all(ours[k].shape == seed[k].shape for k in ours)
    # The names FACTS.md lists for the user's checkpoint.
    assert "cnn.0.bn.weight" in ours and "cnn.0.bn.running_mean" not in ours  # InstanceNorm
    assert "cnn.3.bn.running_var" in ours and "attention.V.bias" not in ours
    assert {"attention.W.weight", "attention.V.weight", "classifier.1.weight",
            "classifier.4.bias", "rnn.weight_hh_l1_reverse"} <= set(ours)


def test_same_outputs_as_the_seed_model():
    torch.manual_seed(0)
    seed = SeedModel(cnn_channels=[4, 8, 8, 16], rnn_hidden=12, att_dim=6).eval()
    ours = HighlightSenseModel(cnn_channels=(4, 8, 8, 16), rnn_hidden=12, att_dim=6).eval()
    ours.load_state_dict(seed.state_dict(), strict=True)
    x = torch.randn(3, 2, 80, grid.PADDED_FRAMES) * 10 - 40
    mask = torch.zeros(3, grid.PADDED_FRAMES)
    for i, real in enumerate((1292, 700, 20)):
        mask[i, :real] = 1
    with torch.no_grad():
        (a, att_a), (b, att_b) = ours(x, mask), seed(x, mask)
    assert a.shape == (3, 1) and att_a.shape == (3, 161)  # 2583 frames -> 161 attention steps
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(att_a, att_b, rtol=0, atol=0)
    assert (att_a[2, 2:] == 0).all()  # 20 real frames: steps 0 and 1 only (mask[:, ::16])


def windows_batch(n, real_lengths, seed=0):
    rng = np.random.default_rng(seed)
    frames = (rng.normal(size=(n, 2, 80, grid.PADDED_FRAMES)) * 10 - 40).astype(np.float32)
    mask = np.zeros((n, grid.PADDED_FRAMES), np.float32)
    for i, real in enumerate(real_lengths):
        frames[i, ..., real:] = frames[i, ..., :real].min()
        mask[i, :real] = 1
    start = np.arange(n) * 215
    return WindowBatch(index=np.arange(n), start_frame=start,
                       end_frame=start + np.array(real_lengths), frames=frames, mask=mask)


def test_batched_scores_equal_one_at_a_time():
    torch.manual_seed(1)
    model = HighlightSenseModel.from_config(SMALL)
    batch = windows_batch(5, [1292, 1292, 1000, 300, 17])
    one = CrnnScorer(model, batch_size=1).score(batch)
    for size in (2, 5, 16):
        many = CrnnScorer(model, batch_size=size).score(batch)
        np.testing.assert_allclose(many.confidence, one.confidence, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(many.peak_frame, one.peak_frame)
    assert one.confidence.dtype == np.float64
    assert ((one.confidence > 0) & (one.confidence < 1)).all()
    logits, _ = CrnnScorer(model).logits(batch)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), one.confidence, rtol=0, atol=1e-6)
    # Peaks stay within each window's real frames.
    assert (one.peak_frame >= batch.start_frame).all() and (one.peak_frame < batch.end_frame).all()


def energy_following_model():
    """A small CRNN whose attention goes where the input is loudest: averaging convs, a GRU that
    forgets (update gate shut) and passes its input on, attention growing with it."""
    torch.manual_seed(2)
    model = HighlightSenseModel(cnn_channels=(1, 1, 1, 1), rnn_hidden=1, rnn_layers=1,
                                att_dim=1, classifier_hidden=2)
    with torch.no_grad():
        for block in model.cnn:
            block.conv.weight.fill_(1 / 9 / block.conv.in_channels)
            block.conv.bias.zero_()
        for name, p in model.rnn.named_parameters():
            p.zero_()
            if name.startswith("weight_ih"):
                p[2] = 1e-3  # new gate follows the input (small: tanh must not saturate)
            if name.startswith("bias_ih"):
                p[1] = -50.0  # update gate shut: h_t = tanh(x_t)
        model.attention.W.weight.fill_(1.0)
        model.attention.W.bias.zero_()
        model.attention.V.weight.fill_(10.0)
    return model.eval()


@pytest.mark.parametrize("burst_at", [40, 600, 1250])
def test_peak_points_at_the_loud_frames(burst_at):
    model = energy_following_model()
    frames = np.zeros((1, 2, 80, grid.PADDED_FRAMES), np.float32)
    frames[..., burst_at:burst_at + 8] = 40.0
    mask = np.zeros((1, grid.PADDED_FRAMES), np.float32)
    mask[:, :1292] = 1
    start = 5 * 215
    batch = WindowBatch(np.array([5]), np.array([start]), np.array([start + 1292]), frames, mask)
    scored = CrnnScorer(model).score(batch)
    # The attention step that pools the burst (16 frames each), reported at its centre.
    assert abs(int(scored.peak_frame[0]) - (start + burst_at + 4)) <= 8
