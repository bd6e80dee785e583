"""Speech-like audio made in code for the VAD rows of the zoo (issue 15): formant-synthesized syllables.

A voice-activity detector says "no speech" to tones, chirps and noise, so those alone test only that a
quantized VAD stays near 0. Syllables from a source-filter model make it fire: a glottal pulse train (its
pitch gliding between 110 and 190 Hz, rolled off like a real glottis) through three resonators at a
vowel's formant frequencies (Peterson & Barney's averages), 180-260 ms long, with short pauses between.
On silero-vad they give speech probabilities up to ~0.7, where the test tones give ~0.
"""

from __future__ import annotations

import numpy as np

#: F1, F2, F3 (Hz) of five vowels; bandwidths 80, 100, 120 Hz
VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410),
          "u": (300, 870, 2240)}
BANDWIDTHS = (80, 100, 120)


def _resonator(x: np.ndarray, freq: float, bandwidth: float, rate: int) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / rate)
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / rate), r * r], x)


def syllables(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """``seconds`` of voiced syllables, peak 1.0."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate))
    pos = 0
    while pos < out.size:
        n = int(rng.uniform(0.18, 0.26) * rate)
        f0 = rng.uniform(110, 190) * np.linspace(1.0, rng.uniform(0.85, 1.15), n)
        pulses = np.diff(np.floor(np.cumsum(f0 / rate)), prepend=0.0)  # one pulse per pitch period
        voice = lfilter([1.0], [1.0, -0.95], pulses)  # glottal roll-off
        for freq, bandwidth in zip(VOWELS[rng.choice(sorted(VOWELS))], BANDWIDTHS):
            voice = _resonator(voice, freq, bandwidth, rate)
        voice *= np.sin(np.linspace(0, np.pi, n)) ** 0.5  # onset and decay
        end = min(out.size, pos + n)
        out[pos:end] = voice[:end - pos]
        pos = end + int(rng.uniform(0.03, 0.09) * rate)
    return out / (np.abs(out).max() + 1e-12)
