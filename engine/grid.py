"""The seed's time grid: log-mel frames at hop 512 on 22,050 Hz audio, and its window arithmetic.

Every scorer sees the same frames and windows, so these numbers live in one place.
"""
import math

FEATURE_RATE = 22050  # Hz, what the seed's librosa.load resamples to
HOP = 512  # samples at FEATURE_RATE between frames
N_FFT = 2048  # librosa's default frame length
AUDIO_RATE = 44100  # Hz, what the decoder delivers (Demucs's rate)
PADDED_SECONDS = 60  # training clips were padded to 60 s
PADDED_FRAMES = int(PADDED_SECONDS * FEATURE_RATE / HOP)  # 2583, as the seed computes it
SAMPLES_PER_FRAME = HOP * AUDIO_RATE // FEATURE_RATE  # 1024 stream samples between frames


def window_frames(window_sec: float) -> int:
    """Frames in one window, as the seed's Config.window_frames (30 s -> 1292)."""
    return int((window_sec * FEATURE_RATE) / HOP) + 1


def stride_frames(stride_sec: float) -> int:
    """Frames between window starts, as the seed's Config.stride_frames (5 s -> 215)."""
    return int((stride_sec * FEATURE_RATE) / HOP)


def frame_sample(frame: int) -> int:
    """The stream sample (44.1 kHz) that frame `frame` is centred on."""
    return frame * SAMPLES_PER_FRAME


def frames_to_sec(frames: int) -> float:
    return frames * HOP / FEATURE_RATE


def feature_samples(audio_samples: int) -> int:
    """Length at 22,050 Hz of audio_samples at 44,100 Hz, as librosa's resample fixes it (ceil)."""
    return math.ceil(audio_samples * FEATURE_RATE / AUDIO_RATE)


def n_frames(audio_samples: int) -> int:
    """Centred frames librosa makes from audio_samples at 44,100 Hz: 1 + n // hop at 22,050 Hz."""
    return 1 + feature_samples(audio_samples) // HOP


def num_windows(total_frames: int, win: int, stride: int) -> int:
    """The seed's window count: at least one, even when the audio is shorter than a window."""
    return max(1, (total_frames - win) // stride + 1)
