"""A synthetic game-stream VOD with known highlight moments and known distractors.

Content, at 44.1 kHz stereo:
  - game bed: low rumble and hiss (filtered noise) plus two drones, moderate, level drifting
    slowly (a few dB over minutes);
  - streamer voice: a quiet harmonic, syllable-modulated, speech-like sound, in phrases of a few
    seconds with pauses;
  - moments (the ground truth, 6-12 s): the voice turns to loud excited shouting (higher and
    wobbling pitch, faster, deeper syllables) over game explosions (loud broadband bursts);
  - distractors: minutes of steady loud music (chords and a beat, as loud as the moments or
    louder), and isolated very loud bangs of 0.1-0.3 s.

Mode "speech" (speech_layout): moments the loudness scorer cannot find. The game bed is steady and
loud at a constant level; a moment is excited shouting alone (no explosions), with the bed ducked
under it so the mix's power stays the same; minutes of loud music are the distractors; no bangs.
Only what the sound is like (a voice's pitch and rhythm over the game) tells a moment.

The signal is a function of absolute time (noise comes from fixed seeded segments), so any
block size yields the same samples and a long VOD is generated block by block in constant memory.
"""
import math
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

RATE = 44100
Interval = Tuple[float, float]

_NOISE_SEG = 1 << 16  # white noise comes in seeded segments of this many samples
_PIECE = 1 << 14  # samples rendered at a time
_BED, _HISS, _SIDE, _BOOM, _BANG, _HAT = range(6)  # independent noise streams


def default_layout(duration_sec: float, seed: int = 0):
    """Ground truth and distractors for a VOD: (moments, music, bangs), lists of (start, end) s.

    Per 10 minutes: 2 music sections of 2-3 min (one of 1.5-2 min in a VOD of 4-9 min); moments
    of 6-12 s about every 60 s wherever no music is within 20 s; a dozen bangs of 0.1-0.3 s at
    least 5 s from both.
    """
    rng = np.random.default_rng([seed, 1])
    music = []
    n_music = int(round(2 * duration_sec / 600))
    if n_music == 0 and duration_sec >= 240:
        n_music = 1
    span = duration_sec / max(n_music, 1)
    for i in range(n_music):
        length = rng.uniform(120, 180) if duration_sec >= 600 else rng.uniform(90, 120)
        length = min(length, span - 40)
        start = i * span + rng.uniform(20, span - length - 20)
        music.append((start, start + length))

    # Free stretches for moments: away from the ends and at least 20 s from any music.
    free, t = [], 10.0
    for ms, me in music + [(duration_sec + 5, duration_sec + 5)]:
        if ms - 20 > t:
            free.append((t, min(ms - 20, duration_sec - 15)))
        t = me + 20
    moments = []
    for lo, hi in free:
        t = lo + rng.uniform(0, 10)
        while True:
            length = rng.uniform(6, 12)
            if t + length > hi:
                break
            moments.append((t, t + length))
            t += rng.uniform(50, 70)

    bangs = []
    n_bangs = int(round(12 * duration_sec / 600))
    busy = [(s - 5, e + 5) for s, e in moments + music]
    for _ in range(50 * n_bangs):
        if len(bangs) == n_bangs:
            break
        start = rng.uniform(2, duration_sec - 2)
        end = start + rng.uniform(0.1, 0.3)
        if all(end <= s or start >= e for s, e in busy):
            bangs.append((start, end))
            busy.append((start - 5, end + 5))
    return moments, music, sorted(bangs)


def speech_layout(duration_sec: float, seed: int = 0):
    """(moments, music, bangs) for mode "speech": a music section of 20-40 s per 3 minutes, and
    moments of 6-10 s every 30-50 s at least 10 s from music; no bangs."""
    rng = np.random.default_rng([seed, 3])
    music, n_music = [], max(1, int(round(duration_sec / 180))) if duration_sec >= 90 else 0
    span = duration_sec / max(n_music, 1)
    for i in range(n_music):
        length = min(rng.uniform(20, 40), span / 3)
        start = i * span + rng.uniform(10, span - length - 10)
        music.append((start, start + length))
    moments, t = [], rng.uniform(5, 15)
    while t + 10 < duration_sec - 5:
        length = rng.uniform(6, 10)
        if all(t + length + 10 <= ms or t >= me + 10 for ms, me in music):
            moments.append((t, t + length))
            t += length + rng.uniform(30, 50)
        else:
            t += 5
    return moments, music, []


MODES = ("default", "speech")


class SyntheticVod:
    """A VOD of duration_sec, deterministic per seed; blocks() yields float32 (2, n) at 44.1 kHz.

    moments (the ground truth), music and bangs (the distractors) are lists of (start, end)
    seconds; each defaults to default_layout(duration_sec, seed)'s.
    """

    rate = RATE

    def __init__(self, duration_sec: float, seed: int = 0,
                 moments: Optional[Sequence[Interval]] = None,
                 music: Optional[Sequence[Interval]] = None,
                 bangs: Optional[Sequence[Interval]] = None, mode: str = "default"):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = mode
        self.duration_sec = float(duration_sec)
        self.seed = seed
        self.n_samples = int(round(duration_sec * RATE))
        layout = (speech_layout if mode == "speech" else default_layout)(duration_sec, seed)
        self.moments: List[Interval] = list(layout[0] if moments is None else moments)
        self.music: List[Interval] = list(layout[1] if music is None else music)
        self.bangs: List[Interval] = list(layout[2] if bangs is None else bangs)

        rng = np.random.default_rng([seed, 2])
        self._drift = [(rng.uniform(1.0, 2.5), rng.uniform(80, 300), rng.uniform(0, 2 * np.pi))
                       for _ in range(2)]  # (dB, period s, phase) of the bed's slow level drift
        self._voice = rng.uniform(0, 2 * np.pi, 4)  # phases of pitch and syllable modulation
        self._talk = self._talk_schedule(rng)
        # Each moment: a few explosions (offset s, decay s, peak) and a pitch offset.
        self._booms = [[(rng.uniform(0, max(e - s - 0.5, 0)), rng.uniform(0.3, 0.7),
                         rng.uniform(0.35, 0.55))
                        for _ in range(rng.integers(2, 5))] for s, e in self.moments]
        self._shout_pitch = [rng.uniform(240, 320) for _ in self.moments]
        self._segments = {}  # (stream, k) -> noise segment, a few recent ones
        if mode == "speech":
            # Powers of the steady bed and of a shout at full level, measured on a few seconds
            # (deterministic): the bed is ducked under a moment by just enough to keep the sum.
            t = np.arange(4 * RATE) / RATE
            self._bed_power = float(np.mean(self._steady_bed(0, len(t), t) ** 2))
            self._shout_power = float(np.mean(self._shout(0, t, 0.0, 4.0, 1.0) ** 2))

    def blocks(self, block_sec: float = 10.0) -> Iterator[np.ndarray]:
        step = max(1, int(round(block_sec * RATE)))
        for a in range(0, self.n_samples, step):
            yield self.render(a, min(a + step, self.n_samples))

    def render(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) of the VOD, float32 (2, b - a)."""
        # Small pieces keep the temporaries in cache: ten times faster than 10-s arrays here.
        # They are whole pieces of a fixed grid, so the samples do not depend on how the VOD is cut.
        out = np.empty((2, b - a), np.float32)
        for lo in range(a // _PIECE * _PIECE, b, _PIECE):
            piece = self._piece(lo, lo + _PIECE)
            out[:, max(lo, a) - a:min(lo + _PIECE, b) - a] = piece[:, max(a - lo, 0):b - lo]
        return out

    def _piece(self, a: int, b: int) -> np.ndarray:
        t = np.arange(a, b) / RATE  # float64: phases need it over hours; waveforms are float32
        if self.mode == "speech":
            return self._speech_piece(a, b, t)
        mono = self._bed(a, b, t) + self._speech(t)
        for i, (s, e) in enumerate(self.moments):
            self._add(mono, a, b, s, e, lambda lo, hi, tt, i=i: self._moment(i, lo, hi, tt))
        for s, e in self.music:
            self._add(mono, a, b, s, e, lambda lo, hi, tt, s=s, e=e: self._music(s, e, lo, hi, tt))
        for s, e in self.bangs:  # with 0.3 s for the tail of the decay
            self._add(mono, a, b, s, e + 0.3,
                      lambda lo, hi, tt, s=s, e=e: self._bang(s, e, lo, hi, tt))
        side = 0.004 * self._noise(_SIDE, a, b)  # a little width; cancels in the mono mix
        out = np.stack([mono + side, mono - side])
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def _speech_piece(self, a: int, b: int, t) -> np.ndarray:
        duck = np.ones(len(t), np.float32)  # the bed's gain: under a moment, just enough less
        shouts = np.zeros(len(t), np.float32)
        for i, (s, e) in enumerate(self.moments):
            lo, hi = max(a, int(s * RATE)), min(b, int(math.ceil(e * RATE)))
            if lo < hi:
                fade = np.clip(np.minimum(t[lo - a:hi - a] - s, e - t[lo - a:hi - a]) / 0.3, 0, 1)
                shouts[lo - a:hi - a] += self._shout(i, t[lo - a:hi - a], s, e, 1.0) * fade
                duck[lo - a:hi - a] = np.sqrt(
                    1 - fade ** 2 * self._shout_power / self._bed_power).astype(np.float32)
        mono = duck * self._steady_bed(a, b, t) + self._speech(t) + shouts
        for s, e in self.music:
            self._add(mono, a, b, s, e, lambda lo, hi, tt, s=s, e=e: self._music(s, e, lo, hi, tt))
        side = 0.004 * self._noise(_SIDE, a, b)
        return np.clip(np.stack([mono + side, mono - side]), -1.0, 1.0).astype(np.float32)

    def _steady_bed(self, a, b, t):
        """The speech mode's game: the bed's sounds, louder, at one level throughout."""
        rumble = self._lowpass(_BED, a, b, 24)
        hiss = self._noise(_HISS, a, b)
        drones = 0.3 * _sin(2 * np.pi * 82.4 * t) + 0.2 * _sin(
            2 * np.pi * 196 * t + 2 * _sin(2 * np.pi * 0.2 * t))
        return np.float32(0.09) * (rumble * 2.0 + hiss * 0.15 + drones * 0.6)

    def _shout(self, i, t, s, e, level):
        """Excited shouting (as a moment's, without its explosions), at half the bed's power
        when level is 1."""
        f0 = self._shout_pitch[i] if i < len(self._shout_pitch) else 280.0
        phase = (2 * np.pi * f0 * (t - s) + np.pi * 20 / (e - s) * (t - s) ** 2
                 - (12 / 6.0) * _cos(2 * np.pi * 6.0 * t))
        syllables = 0.15 + 0.85 * (0.5 + 0.5 * _sin(2 * np.pi * 5.5 * t + _sin(2 * np.pi * t)))
        return np.float32(0.12 * level) * syllables * _harmonics(phase, 8, 0.7)

    # --- parts ---------------------------------------------------------------------------------

    def _add(self, mono, a, b, start_sec, end_sec, part):
        """Adds part(lo, hi, t) on the samples of [start_sec, end_sec) that fall in [a, b)."""
        lo = max(a, int(start_sec * RATE))
        hi = min(b, int(math.ceil(end_sec * RATE)))
        if lo < hi:
            mono[lo - a:hi - a] += part(lo, hi, np.arange(lo, hi) / RATE)

    def _bed(self, a, b, t):
        # The drift is slow: one gain per piece (0.37 s) is smooth enough.
        drift_db = sum(d * np.sin(2 * np.pi * t[0] / p + ph) for d, p, ph in self._drift)
        gain = np.float32(0.03 * 10 ** (drift_db / 20))
        rumble = self._lowpass(_BED, a, b, 24)
        hiss = self._noise(_HISS, a, b)
        drones = 0.3 * _sin(2 * np.pi * 82.4 * t) + 0.2 * _sin(
            2 * np.pi * 196 * t + 2 * _sin(2 * np.pi * 0.2 * t))
        return gain * (rumble * 2.0 + hiss * 0.15 + drones * 0.6)

    def _talk_schedule(self, rng):
        """Alternating phrases (1.5-6 s) and pauses (0.5-4 s) over the whole VOD."""
        edges, t = [], rng.uniform(0, 2)
        while t < self.duration_sec:
            length = rng.uniform(1.5, 6)
            edges.append((t, t + length))
            t += length + rng.uniform(0.5, 4)
        return np.array(edges).reshape(-1, 2)

    def _speech(self, t):
        gate = np.zeros(len(t), np.float32)
        first = np.searchsorted(self._talk[:, 1], t[0])  # phrases ending after this piece starts
        for start, end in self._talk[first:]:
            if start >= t[-1]:
                break
            on = (t > start) & (t < end)
            gate[on] = np.minimum(np.minimum(t[on] - start, end - t[on]) / 0.05, 1)  # 50 ms edges
        if not gate.any():
            return gate
        p = self._voice
        phase = 2 * np.pi * 130 * t - (15 / 0.3) * _cos(2 * np.pi * 0.3 * t + p[0])
        syllables = 0.5 + 0.5 * _sin(2 * np.pi * 4.0 * t + 2 * _sin(2 * np.pi * 0.7 * t + p[1]))
        return 0.085 * gate * syllables ** 2 * _harmonics(phase, 8, 1.0)

    def _moment(self, i, lo, hi, t):
        s, e = self.moments[i]
        fade = np.clip(np.minimum(t - s, e - t) / 0.3, 0, 1).astype(np.float32)
        # Shouting: higher pitch rising through the moment, fast wobble, deep fast syllables.
        f0 = self._shout_pitch[i]
        phase = (2 * np.pi * f0 * (t - s) + np.pi * 20 / (e - s) * (t - s) ** 2
                 - (12 / 6.0) * _cos(2 * np.pi * 6.0 * t))
        syllables = 0.15 + 0.85 * (0.5 + 0.5 * _sin(2 * np.pi * 5.5 * t + _sin(2 * np.pi * t)))
        out = 0.22 * fade * syllables * _harmonics(phase, 8, 0.7)
        # Explosions: a sharp attack, then a rumbling decay.
        boom = np.zeros(len(t), np.float32)
        for offset, decay, peak in self._booms[i]:
            dt = (t - (s + offset)).astype(np.float32)
            attack = np.clip(dt / 0.005, 0, 1)
            env = attack * np.exp(-np.maximum(dt, 0) / decay)
            boom += peak * env
        if boom.any():
            noise = 1.8 * self._lowpass(_BOOM, lo, hi, 16) + 0.4 * self._noise(_BOOM, lo, hi)
            out += boom * noise * 0.5
        return out

    def _music(self, s, e, lo, hi, t):
        fade = np.clip(np.minimum(t - s, e - t) / 1.0, 0, 1).astype(np.float32)
        # Chords: a I-V-vi-IV progression, 2 s each, three notes and a bass of 3 partials each.
        roots = np.array([0, 7, 9, 5])[(np.floor((t - s) / 2.0).astype(int)) % 4]
        chord = np.zeros(len(t), np.float32)
        for interval, gain in ((0, 1.0), (4, 0.8), (7, 0.8), (-12, 1.0)):
            f = 261.63 * 2 ** ((roots + interval) / 12)
            chord += gain * _harmonics(2 * np.pi * f * t, 3, 1.0)
        beat = ((t - s) % 0.5).astype(np.float32)
        decay = np.exp(-beat / 0.08)
        kick = decay * _sin(2 * np.pi * (50 * beat + 60 * 0.08 * (1 - decay)))  # pitch drops
        hat = np.exp(-((t - s) % 0.25).astype(np.float32) / 0.02) * self._noise(_HAT, lo, hi)
        return fade * (0.15 * chord + 0.6 * kick + 0.12 * hat)

    def _bang(self, s, e, lo, hi, t):
        dt = (t - s).astype(np.float32)
        env = np.minimum(dt / 0.002, 1) * np.exp(-dt / ((e - s) / 3))
        noise = 0.5 * self._noise(_BANG, lo, hi) + 1.5 * self._lowpass(_BANG, lo, hi, 8)
        return 0.9 * env * noise  # peaks well past full scale: clipped, as a real bang would be

    # --- noise ---------------------------------------------------------------------------------

    def _noise(self, stream: int, a: int, b: int) -> np.ndarray:
        """White noise samples [a, b) of a stream: the same numbers whatever range asks for them.
        Samples before time 0 are silence."""
        out = np.zeros(b - a, np.float32)
        for k in range(max(a, 0) // _NOISE_SEG, (b - 1) // _NOISE_SEG + 1):
            lo, hi = max(a, k * _NOISE_SEG), min(b, (k + 1) * _NOISE_SEG)
            if lo < hi:
                base = k * _NOISE_SEG
                out[lo - a:hi - a] = self._segment(stream, k)[lo - base:hi - base]
        return out

    def _segment(self, stream: int, k: int) -> np.ndarray:
        key = (stream, k)
        if key not in self._segments:
            if len(self._segments) > 16:  # the pieces walk forward: old segments are done with
                self._segments.pop(next(iter(self._segments)))
            rng = np.random.default_rng([self.seed, 100 + stream, k])
            # Uniform, unit variance: sounds the same as Gaussian and is much cheaper to draw.
            self._segments[key] = (rng.random(_NOISE_SEG, np.float32) - 0.5) * np.float32(12 ** 0.5)
        return self._segments[key]

    def _lowpass(self, stream: int, a: int, b: int, taps: int) -> np.ndarray:
        """Noise through two moving averages of taps // 2 (a triangular FIR, cut-off about
        RATE / taps), scaled back to unit RMS. Cumulative sums: cheaper than np.convolve."""
        half = taps // 2
        x = self._noise(stream, a - 2 * (half - 1), b).astype(np.float64)
        for _ in range(2):
            c = np.concatenate([[0.0], np.cumsum(x)])
            x = c[half:] - c[:-half]
        gain = 1 / np.sqrt(np.sum(np.convolve(np.ones(half), np.ones(half)) ** 2))
        return (x * gain).astype(np.float32)


def _wrap(phase: np.ndarray) -> np.ndarray:
    """Phase (float64, large after an hour) wrapped to [0, 2 pi) in float32."""
    turns = phase * (1 / (2 * np.pi))
    turns -= np.floor(turns)  # cheaper than np.mod
    return (turns * (2 * np.pi)).astype(np.float32)


def _sin(phase: np.ndarray) -> np.ndarray:
    """sin in float32: many times faster than float64 here."""
    return np.sin(_wrap(phase))


def _cos(phase: np.ndarray) -> np.ndarray:
    return np.cos(_wrap(phase))


def _harmonics(phase: np.ndarray, n: int, rolloff: float) -> np.ndarray:
    """sum_k sin(k phase) / k**rolloff, via the Chebyshev recurrence (one sin and one cos)."""
    s_prev, s_cur = np.zeros(len(phase), np.float32), _sin(phase)
    two_cos = 2 * _cos(phase)
    out = s_cur.copy()
    for k in range(2, n + 1):
        s_prev, s_cur = s_cur, two_cos * s_cur - s_prev
        out += s_cur / k ** rolloff
    return out
