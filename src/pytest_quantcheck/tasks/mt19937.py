"""The random task selection of ``llama-perplexity``, reproduced draw for draw.

llama-perplexity picks tasks with ``std::mt19937 rng(1)``: HellaSwag through
``std::uniform_int_distribution<size_t>`` (always, so its task order is random even when every
task is used), Winogrande and multiple choice through ``int(scale * rng() * n)`` in ``float``
arithmetic. The generator is specified exactly by the C++ standard; the distribution is the one
of GCC's libstdc++ 11 and later (Lemire's nearly divisionless method), which every current Linux
build of llama.cpp uses. A build against another C++ library (libc++ on macOS, MSVC) draws
other HellaSwag tasks when fewer than all are selected.
"""

from __future__ import annotations

import numpy as np

_MASK = 0xFFFFFFFF


class MT19937:
    """``std::mt19937`` (32-bit Mersenne Twister) seeded like ``std::mt19937 rng(seed)``."""

    def __init__(self, seed: int = 5489) -> None:
        state = [seed & _MASK]
        for i in range(1, 624):
            prev = state[-1]
            state.append((1812433253 * (prev ^ (prev >> 30)) + i) & _MASK)
        self._state = state
        self._index = 624

    def _twist(self) -> None:
        s = self._state
        for i in range(624):
            y = (s[i] & 0x80000000) | (s[(i + 1) % 624] & 0x7FFFFFFF)
            s[i] = s[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self._index = 0

    def __call__(self) -> int:
        if self._index >= 624:
            self._twist()
        y = self._state[self._index]
        self._index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)


def uniform_int(rng: MT19937, low: int, high: int) -> int:
    """``std::uniform_int_distribution<size_t>(low, high)(rng)`` as libstdc++ >= 11 computes it
    for a 32-bit generator and a range below 2**32."""
    span = high - low + 1
    if not 0 < span < 2**32:
        raise ValueError(f"range {low}..{high} is outside what llama-perplexity draws")
    product = rng() * span
    low_bits = product & _MASK
    if low_bits < span:
        threshold = (2**32 - span) % span
        while low_bits < threshold:
            product = rng() * span
            low_bits = product & _MASK
    return low + (product >> 32)


_SCALE = np.float32(1.0) / (np.float32(1.0) + np.float32(float(_MASK)))


def float_index(rng: MT19937, n: int) -> int:
    """``int(scale * rng() * n)`` with ``float scale = 1/(1.f + (float)rng.max())``: the draw of
    llama-perplexity's Winogrande and multiple-choice selection, rounded as ``float`` rounds."""
    value = int(np.float32(_SCALE * np.float32(rng())) * np.float32(n))
    return min(value, n - 1)  # a draw rounded up to 1.0 would index past the end in C++
