"""The seed's CRNN with attention: four conv blocks, a bidirectional GRU, attention pooling and a
small classifier. Module names match the user's checkpoint (cnn.N.conv/bn, rnn, attention.W/V,
classifier.1/4) so it loads strictly; hyper-parameters are arguments or read from a state dict.
"""
import re
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# The input's time axis shrinks 16-fold through the pools; attention step k covers frames
# [16k, 16k + 16) of the padded window (the seed masks with mask[:, ::16]).
TIME_STRIDE = 16


@dataclass(frozen=True)
class CrnnConfig:
    """The seed notebook's Config model settings (dropouts only matter in training)."""

    n_mels: int = 80
    cnn_channels: Tuple[int, ...] = (32, 64, 128, 256)
    rnn_hidden: int = 256
    rnn_layers: int = 2
    rnn_dropout: float = 0.3
    att_dim: int = 128
    classifier_hidden: int = 128
    dropout: float = 0.5


# `train --arch`: the seed's network, or a narrow one (about 60k parameters, a few times faster)
# for quick experiments on a CPU; both load back through model.checkpoint.load_model.
ARCHS = {
    "full": CrnnConfig(),
    "small": CrnnConfig(cnn_channels=(8, 16, 32, 32), rnn_hidden=32, rnn_layers=2, att_dim=16,
                        classifier_hidden=32),
}


class ConvBlock(nn.Module):
    def __init__(self, inc: int, outc: int, pool, first_layer: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(inc, outc, 3, padding=1)
        # The first block normalises per instance: a constant dB offset of the input barely matters.
        self.bn = nn.InstanceNorm2d(outc, affine=True) if first_layer else nn.BatchNorm2d(outc)
        self.pool = nn.MaxPool2d(pool)

    def forward(self, x):
        return self.pool(F.relu(self.bn(self.conv(x))))


class Attention(nn.Module):
    def __init__(self, dim: int, att_dim: int):
        super().__init__()
        self.W = nn.Linear(dim, att_dim)
        self.V = nn.Linear(att_dim, 1, bias=False)

    def forward(self, x, mask=None):
        s = self.V(torch.tanh(self.W(x))).squeeze(-1)
        if mask is not None:
            s = s.masked_fill(mask == 0, float("-inf"))  # as the inference notebook
        w = F.softmax(s, dim=1)
        return torch.bmm(w.unsqueeze(1), x).squeeze(1), w


class HighlightSenseModel(nn.Module):
    def __init__(self, n_mels: int = 80, cnn_channels: Sequence[int] = (32, 64, 128, 256),
                 rnn_hidden: int = 256, rnn_layers: int = 2, rnn_dropout: float = 0.3,
                 att_dim: int = 128, classifier_hidden: int = 128, dropout: float = 0.5):
        super().__init__()
        self.config = CrnnConfig(n_mels, tuple(cnn_channels), rnn_hidden, rnn_layers,
                                 rnn_dropout, att_dim, classifier_hidden, dropout)
        layers, in_ch = [], 2  # two stems: voice, game
        for i, out_ch in enumerate(cnn_channels):
            # Three (2, 2) pools then one that only halves time: mels / 8, frames / 16.
            layers.append(ConvBlock(in_ch, out_ch, (2, 2) if i < 3 else (1, 2), first_layer=i == 0))
            in_ch = out_ch
        self.cnn = nn.Sequential(*layers)
        self.rnn = nn.GRU(input_size=cnn_channels[-1] * (n_mels // 8), hidden_size=rnn_hidden,
                          num_layers=rnn_layers, batch_first=True, bidirectional=True,
                          dropout=rnn_dropout if rnn_layers > 1 else 0)
        self.attention = Attention(rnn_hidden * 2, att_dim)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(rnn_hidden * 2, classifier_hidden),
            nn.ReLU(),
            nn.Dropout(dropout / 2),
            nn.Linear(classifier_hidden, 1),
        )

    def forward(self, x, mask=None):
        """x (B, 2, n_mels, T), mask (B, T) with 1 on real frames -> logits (B, 1), attention
        weights (B, T // 16)."""
        c = self.cnn(x)
        c = c.permute(0, 3, 1, 2).reshape(x.size(0), c.size(3), -1)  # (B, time, channels*mels)
        m = mask[:, ::TIME_STRIDE][:, :c.size(1)] if mask is not None else None
        r, _ = self.rnn(c)
        ctx, att = self.attention(r, m)
        return self.classifier(ctx), att

    @classmethod
    def from_config(cls, config: CrnnConfig) -> "HighlightSenseModel":
        return cls(**asdict(config))


def infer_config(state_dict: Dict[str, torch.Tensor],
                 base: Optional[CrnnConfig] = None) -> CrnnConfig:
    """Hyper-parameters read from a state dict's shapes (inference names); what the shapes do
    not tell (dropouts, n_mels beyond mels // 8) comes from `base` (the seed's by default).
    Raises KeyError or ValueError when the state dict lacks what it needs."""
    base = base or CrnnConfig()
    convs = sorted((int(m.group(1)), v) for k, v in state_dict.items()
                   if (m := re.fullmatch(r"cnn\.(\d+)\.conv\.weight", k)))
    if not convs:
        raise KeyError("cnn.0.conv.weight")
    channels = tuple(int(v.shape[0]) for _, v in convs)
    rnn_in = state_dict["rnn.weight_ih_l0"].shape[1]
    if rnn_in % channels[-1]:
        raise ValueError(f"rnn input size {rnn_in} is not a multiple of {channels[-1]} channels")
    freq_out = rnn_in // channels[-1]
    n_mels = base.n_mels if base.n_mels // 8 == freq_out else freq_out * 8
    layers = len([k for k in state_dict if re.fullmatch(r"rnn\.weight_ih_l\d+", k)])
    return CrnnConfig(
        n_mels=n_mels,
        cnn_channels=channels,
        rnn_hidden=int(state_dict["rnn.weight_hh_l0"].shape[1]),
        rnn_layers=layers,
        rnn_dropout=base.rnn_dropout,
        att_dim=int(state_dict["attention.W.weight"].shape[0]),
        classifier_hidden=int(state_dict["classifier.1.weight"].shape[0]),
        dropout=base.dropout,
    )
