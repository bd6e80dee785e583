"""Speech-like audio made in code for the VAD rows of the zoo (issue 15): formant-synthesized syllables.

A voice-activity detector says "no speech" to tones, chirps and noise, so those alone test only that a
quantized VAD stays near 0. Syllables from a source-filter model make it fire: a glottal pulse train
(pitch 100-220 Hz with a slow vibrato and drift, rolled off like a real glottis, plus aspiration noise)
through five resonators whose frequencies glide from one vowel's formants to another's (Peterson & Barney's
averages for F1-F3), 150-300 ms syllables, half of them followed by a fricative (high-passed noise). On
silero-vad they give speech probabilities of 0.6-0.99 for most windows, where the test tones give ~0.
"""

from __future__ import annotations

import numpy as np

RATE = 16000
#: F1..F5 (Hz) of five vowels, and the five resonators' bandwidths
VOWELS = {"a": (730, 1090, 2440, 3400, 4200), "e": (530, 1840, 2480, 3500, 4300), "i": (270, 2290, 3010, 3600, 4400),
          "o": (570, 840, 2410, 3300, 4100), "u": (300, 870, 2240, 3300, 4100)}
BANDWIDTHS = (70, 90, 120, 180, 250)
GLIDE_STEPS = 8  # a syllable's formants move from its first vowel to its second in this many steps


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / RATE)
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / RATE), r * r], x)


def _syllable(rng: np.random.Generator, n: int) -> np.ndarray:
    from scipy.signal import lfilter

    t = np.arange(n) / RATE
    vibrato = 1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 2 * np.pi))
    drift = 1 + 0.01 * rng.normal(size=n).cumsum() / np.sqrt(n)
    f0 = rng.uniform(100, 220) * vibrato * drift
    pulses = np.diff(np.floor(np.cumsum(f0 / RATE)), prepend=0.0)  # one pulse per pitch period
    source = lfilter([1.0], [1.0, -0.97], pulses) + 0.02 * rng.normal(size=n)  # glottal roll-off, aspiration
    first, second = VOWELS[rng.choice(sorted(VOWELS))], VOWELS[rng.choice(sorted(VOWELS))]
    out = np.zeros(n)
    for step in range(GLIDE_STEPS):
        part = slice(step * n // GLIDE_STEPS, (step + 1) * n // GLIDE_STEPS)
        w = step / (GLIDE_STEPS - 1)
        y = source[part]
        for f1, f2, bandwidth in zip(first, second, BANDWIDTHS):
            y = _resonator(y, (1 - w) * f1 + w * f2, bandwidth)
        out[part] = y
    return out * np.sin(np.linspace(0, np.pi, n)) ** 0.3  # onset and decay


def syllables(seconds: float, seed: int = 0) -> np.ndarray:
    """``seconds`` of syllables at 16 kHz, each scaled to a peak of 0.6-1.0."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    pos = 0
    while pos < out.size:
        n = int(rng.uniform(0.15, 0.3) * RATE)
        voiced = _syllable(rng, n)
        end = min(out.size, pos + n)
        out[pos:end] = voiced[:end - pos] / (np.abs(voiced).max() + 1e-12) * rng.uniform(0.6, 1.0)
        pos = end
        if rng.random() < 0.5:  # a fricative: high-passed noise
            m = int(rng.uniform(0.04, 0.09) * RATE)
            noise = 0.15 * lfilter([1, -0.9], [1], rng.normal(size=m))
            end = min(out.size, pos + m)
            out[pos:end] = noise[:end - pos]
            pos = end
        pos += int(rng.uniform(0.0, 0.05) * RATE)
    return out
