"""MelFeatures: separated stems in, the seed's log-mel frames out, streaming.

The seed computes, per stem, over the whole VOD: librosa.load(sr=22050, mono=True) (mean over
channels, then soxr "soxr_hq" resampling, length fixed to ceil(n * ratio)), melspectrogram
(n_fft 2048, hop 512, periodic Hann, centred frames with zero padding, power 2, 80 Slaney mels
with Slaney norm, fmin 0, fmax sr/2), then power_to_db(ref=np.max, top_db=80), and stacks the two
stems as (2, 80, frames). This operator does the same a chunk at a time: soxr's ResampleStream
gives exactly soxr.resample's samples, engine.framing.CenteredFramer cuts frames as librosa
centres them, and torch's FFT with our own Slaney filterbank runs on the model's device. It holds
less than one frame of samples between chunks.

The one thing a stream cannot know is the seed's reference, the maximum over the whole VOD (each
stem its own), which also sets the -80 dB floor. Here each stem's reference is the running
maximum of its mel power (frame t: the maximum over frames 0..t), or `reference_db` when that is
higher. From the VOD's loudest frame on this is the seed's reference, and the frames are the
seed's to 1e-4 dB. Before it the floor sits higher than the seed's: the InstanceNorm of the
model's first block removes a constant offset, not a floor that moved, and scores follow it
(tests/test_fidelity.py: about 0.07 of probability per dB of reference error). So at end of
stream the reference's history in state() says which frames came out under a lower reference
(engine.second_pass.exact_from), and a second pass over them with reference_db=<this run's
reference_db> reproduces the seed's features exactly.
"""
import math
from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import numpy as np
import soxr
import torch

from highlightsense.engine import grid
from highlightsense.engine.chunks import AudioChunk, FrameChunk
from highlightsense.engine.framing import CenteredFramer
from highlightsense.engine.operator import RestartableStage

if TYPE_CHECKING:
    from highlightsense.engine.second_pass import HeldLevels

N_MELS = 80
TOP_DB = 80.0
AMIN = 1e-10  # librosa's power_to_db amin
STEMS = ("voice", "game")  # the order the separation operator emits, and the model's channels


def hz_to_mel(hz):
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, hz / f_sp)


def mel_to_hz(mels):
    mels = np.asarray(mels, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    log_part = min_log_hz * np.exp(logstep * (np.maximum(mels, min_log_mel) - min_log_mel))
    return np.where(mels >= min_log_mel, log_part, f_sp * mels)


def slaney_mel_filterbank(sr: int = grid.FEATURE_RATE, n_fft: int = grid.N_FFT,
                          n_mels: int = N_MELS, fmin: float = 0.0,
                          fmax: Optional[float] = None) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 triangular filters with Slaney area norm, computed in the
    same steps (and precisions) as librosa.filters.mel's defaults."""
    fmax = sr / 2 if fmax is None else fmax
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, len(fftfreqs)), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


class LogMel:
    """The torch half of the features: mel power in dB (10 log10, amin 1e-10) on a device, with
    the window and the filterbank made once."""

    def __init__(self, device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.window = torch.hann_window(grid.N_FFT, periodic=True, device=self.device)
        self.mel = torch.from_numpy(slaney_mel_filterbank()).to(self.device)

    def frames(self, frames: np.ndarray) -> torch.Tensor:
        """Frames (k, stems, n_fft) at 22,050 Hz -> (stems, 80, k)."""
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self.device)
        return self._db(torch.fft.rfft(x * self.window, dim=-1).permute(1, 2, 0))

    def signal(self, samples: np.ndarray) -> torch.Tensor:
        """A whole signal (stems, n) -> (stems, 80, 1 + n // hop), centred as librosa frames it
        (torch.stft's own framing: the offline reference for the streaming path)."""
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)
        return self._db(torch.stft(x, grid.N_FFT, grid.HOP, window=self.window, center=True,
                                   pad_mode="constant", return_complex=True))

    def _db(self, spec: torch.Tensor) -> torch.Tensor:
        power = spec.real.square() + spec.imag.square()  # |X|^2: librosa's power=2
        return 10.0 * torch.log10(torch.clamp(self.mel @ power, min=AMIN))


def to_db(level: torch.Tensor, reference: torch.Tensor):
    """power_to_db's last steps with a running reference instead of the whole signal's maximum.

    level (stems, mels, n) in dB and each stem's reference so far (stems,) -> (features, the
    reference of every frame (stems, n)): frame t's is the maximum over frames up to t.
    """
    ref = torch.maximum(torch.cummax(level.amax(dim=1), dim=1).values, reference[:, None])
    return torch.clamp(level - ref[:, None, :], min=-TOP_DB), ref


class MelFeatures(RestartableStage):
    """AudioChunk (stems, channels, n) at `rate` -> FrameChunk (stems, 80, m) float32 frames.

    The stream may begin later than sample 0 (a restart): samples before the next frame-grid
    point are dropped, and frames are emitted from `restart_frames` after that point on, each
    equal to an uninterrupted run's given that run's state() (see restore()). `hold` keeps the
    levels of a span of its frames (the stream's first, for the second pass: engine.second_pass;
    a time shard's own: engine.shards).
    """

    name = "features"

    def __init__(self, device: Union[str, torch.device] = "cpu", rate: int = grid.AUDIO_RATE,
                 reference_db: Union[None, float, Sequence[float]] = None, stems=STEMS,
                 emit_from: int = 0, hold: Optional["HeldLevels"] = None):
        self.rate = rate
        self.stems = tuple(stems)
        self.log_mel = LogMel(device)
        self._resampler = None if rate == grid.FEATURE_RATE else soxr.ResampleStream(
            rate, grid.FEATURE_RATE, len(self.stems), dtype="float32", quality="soxr_hq")
        self._framer = CenteredFramer(grid.N_FFT, grid.HOP)
        start_ref = -math.inf if reference_db is None else reference_db
        start_ref = np.broadcast_to(start_ref, len(self.stems)).astype(np.float64)
        self._ref = torch.tensor(start_ref, dtype=torch.float32, device=self.log_mel.device)
        # Per stem, (frame, reference) each time the reference rose: a running maximum rises
        # rarely (about log(frames) times on stationary sound), so this stays small.
        self._rises = [[] for _ in self.stems]
        self._whole_stream = False  # True once restore() gave the history before this run
        self.emit_from = emit_from
        # The levels (dB before the reference) of the stream's first frames, kept so that the
        # second pass can apply the final reference without separating again.
        self.hold = hold
        self.frames_emitted = 0  # one past the last frame emitted (absolute)
        self._expected = None  # stream sample the next chunk must start at
        self._first_frame = None  # absolute index of the frame-grid point the run starts at
        self._skip = 0  # samples still to drop to reach that point
        self._in = 0  # samples received from that point on
        self._out = 0  # resampled samples given to the framer

    @property
    def reference_db(self) -> List[float]:
        """Each stem's reference so far (dB): what a restart or a second pass carries over."""
        return self._ref.tolist()

    @property
    def state_schema(self) -> dict:
        per_stem = {"minItems": len(self.stems), "maxItems": len(self.stems)}
        rise = {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0},
                                                 {"type": "level"}], "minItems": 2,
                "maxItems": 2}
        return {"type": "object", "required": ["reference_db", "reference_rises", "first_frame"],
                "additionalProperties": False, "properties": {
                    "reference_db": {"type": "array", "items": {"type": "level"}, **per_stem},
                    "reference_rises": {"type": "array", **per_stem, "items": {
                        "type": "array", "items": rise}},
                    "first_frame": {"type": "integer", "minimum": 0}}}

    def state(self) -> dict:
        """The reference and its history: each stem's (frame, reference) at every rise, and the
        first frame the history speaks for (0 once it covers the whole stream). Copies: it is
        read from the event loop while the stage appends in its thread."""
        rises = [list(stem) for stem in self._rises]
        return {"reference_db": self.reference_db, "reference_rises": rises,
                "first_frame": 0 if self._whole_stream else self._first_frame or 0}

    def restore(self, state: dict) -> None:
        """A resumed run starts from the interrupted one's history before `emit_from`, the
        frame it resumes at: the reference there is the last rise's, and the history still
        speaks for the whole stream."""
        self._whole_stream = True
        self._rises = [[(int(f), float(r)) for f, r in stem if f < self.emit_from]
                       for stem in state["reference_rises"]]
        ref = self._ref.clone()
        for stem, history in enumerate(self._rises):
            if history:
                ref[stem] = max(float(ref[stem]), history[-1][1])
        self._ref = ref

    @property
    def samples_per_frame(self) -> int:
        """Input samples per hop (1024 at 44.1 kHz)."""
        return grid.HOP * self.rate // grid.FEATURE_RATE

    @property
    def restart_frames(self) -> int:
        """Frames after a restart's first frame-grid point that differ from an uninterrupted
        run's: the centring's n_fft/2 zeros plus the resampler filter's reach. 3 at 44.1 kHz."""
        reach = 0 if self._resampler is None else RESAMPLER_REACH
        return math.ceil((grid.N_FFT // 2 + reach) / grid.HOP)

    @property
    def warmup_samples(self) -> int:
        """A restart at least this many input samples before T (on the frame grid) reproduces
        the frames from T on: 3072 samples, 70 ms, at 44.1 kHz."""
        return self.restart_frames * self.samples_per_frame

    @property
    def lookahead_samples(self) -> int:
        """A frame needs the centring's n_fft/2 and the resampler's reach after it."""
        return self.warmup_samples

    def restart_sample(self, first_needed: int) -> int:
        """The latest input sample where a restart reproduces the frames centred at or after
        `first_needed` (given the uninterrupted run's state())."""
        frame = -(-first_needed // self.samples_per_frame)
        return max(0, frame - self.restart_frames) * self.samples_per_frame

    def samples_through(self, frame: int) -> int:
        """Input samples (from sample 0) a run must read for its frames up to `frame` to equal a
        longer run's: the reach after a frame is the same as before it."""
        return (frame + self.restart_frames + 1) * self.samples_per_frame

    def process(self, chunk: AudioChunk) -> List[FrameChunk]:
        if chunk.rate != self.rate or tuple(chunk.stems) != self.stems:
            raise ValueError(f"features expect stems {self.stems} at {self.rate} Hz, "
                             f"got {tuple(chunk.stems)} at {chunk.rate} Hz")
        if self._expected is None:  # the first chunk: start at the next frame-grid point
            self._skip = -chunk.start % self.samples_per_frame
            self._first_frame = (chunk.start + self._skip) // self.samples_per_frame
        elif chunk.start != self._expected:
            raise ValueError(f"chunk starts at {chunk.start}, expected {self._expected}")
        self._expected = chunk.end
        samples = chunk.samples[..., self._skip:]
        self._skip -= chunk.samples.shape[-1] - samples.shape[-1]
        mono = np.mean(samples, axis=1, dtype=np.float32)  # librosa's to_mono
        self._in += mono.shape[-1]
        return self._emit(self._framer.push(self._resample(mono, last=False)))

    def flush(self) -> List[FrameChunk]:
        if self._expected is None:
            return []
        tail = self._resample(np.zeros((len(self.stems), 0), np.float32), last=True)
        # librosa.resample fixes the length to ceil(n * ratio); soxr already gives that many.
        want = math.ceil(self._in * grid.FEATURE_RATE / self.rate)
        if self._out > want:
            raise RuntimeError(f"resampler gave {self._out} samples, librosa keeps {want}")
        tail = np.pad(tail, ((0, 0), (0, want - self._out)))
        frames = np.concatenate([self._framer.push(tail), self._framer.flush()])
        return self._emit(frames)

    def _resample(self, mono: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(np.ascontiguousarray(mono.T), last=last).T
        self._out += mono.shape[-1]
        return mono

    def _emit(self, frames: np.ndarray) -> List[FrameChunk]:
        first = self._framer.frames_out - len(frames)  # counted from the run's first frame
        if self._first_frame > 0:  # a restart: its first frames lack their context
            skip = max(0, self.restart_frames - first)
            frames, first = frames[skip:], first + skip
        first += self._first_frame  # absolute frame index
        if first < self.emit_from:  # a resumed run: frames before it were scored already
            skip = min(len(frames), self.emit_from - first)
            frames, first = frames[skip:], first + skip
        if len(frames) == 0:
            return []
        level = self.log_mel.frames(frames)
        self.frames_emitted = first + len(frames)
        if self.hold is not None:  # it keeps those in its span, and counts the rest
            keep = self.hold.wanted(first, len(frames))  # outside it, no copy to the host
            self.hold.add(level[..., keep].cpu().numpy() if keep.stop > keep.start else None,
                          first, len(frames))
        db, ref = to_db(level, self._ref)
        rose = torch.diff(ref, dim=1, prepend=self._ref[:, None]) > 0
        for stem, j in rose.nonzero().tolist():
            self._rises[stem].append((first + j, float(ref[stem, j])))
        self._ref = ref[:, -1].clone()
        return [FrameChunk(db.cpu().numpy(), first)]


# soxr_hq 2:1: output samples an input sample moves by more than 1e-7 (measured: 95), rounded up.
RESAMPLER_REACH = 100


def mel_levels_offline(stems: np.ndarray, rate: int = grid.AUDIO_RATE,
                       device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """The whole-signal levels (dB before the reference) MelFeatures streams, and HeldLevels
    keeps: stems (S, channels, n) -> (S, 80, frames), on `device`."""
    mono = np.mean(stems, axis=1, dtype=np.float32)
    if rate != grid.FEATURE_RATE:
        want = math.ceil(stems.shape[-1] * grid.FEATURE_RATE / rate)
        mono = soxr.resample(np.ascontiguousarray(mono.T), rate, grid.FEATURE_RATE,
                             quality="soxr_hq").T
        mono = np.pad(mono[:, :want], ((0, 0), (0, want - min(want, mono.shape[1]))))
    return LogMel(device).signal(mono)


def mel_features_offline(stems: np.ndarray, rate: int = grid.AUDIO_RATE,
                         device: Union[str, torch.device] = "cpu",
                         reference_db: Union[None, float, Sequence[float]] = None) -> np.ndarray:
    """The whole-signal answer MelFeatures streams: stems (S, channels, n) -> (S, 80, frames).
    It holds the whole signal, so it is for tests and comparisons, not for the pipeline."""
    level = mel_levels_offline(stems, rate, device)
    start = -math.inf if reference_db is None else reference_db
    ref = torch.tensor(np.broadcast_to(start, len(stems)), dtype=torch.float32,
                       device=level.device)
    return to_db(level, ref)[0].cpu().numpy()
