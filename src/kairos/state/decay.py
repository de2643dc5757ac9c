"""Exponential time decay by forward decay (Cormode, Shkapenyuk, Srivastava, Xu; ICDE 2009).

An event of weight w at time t is stored as w * exp(rate * (t - landmark)). Its value
at any later time T is that stored number times exp(-rate * (T - landmark)): the same
factor for every key, so ranking needs no per-key update and arrival order does not
matter. When the exponent grows large the holder rescales everything once.
"""

from __future__ import annotations

import math

RESCALE_EXPONENT = 400.0  # e**400 ~ 1e174, far from float64's 1e308 ceiling


class ForwardDecay:
    def __init__(self, half_life_s: float) -> None:
        self.rate = math.log(2.0) / half_life_s if half_life_s > 0 else 0.0
        self.landmark: float | None = None

    def weight(self, t: float) -> float:
        """The forward factor of an event at time t."""
        if self.landmark is None:
            self.landmark = t
        return math.exp(self.rate * (t - self.landmark))

    def now_factor(self, now: float) -> float:
        """Multiply a stored value by this to get its decayed value at `now`."""
        if self.landmark is None:
            return 1.0
        return math.exp(-self.rate * (now - self.landmark))

    def rescale_needed(self, t: float) -> float | None:
        """If t is far past the landmark, move the landmark to t and return the factor
        every stored value must be multiplied by; otherwise None."""
        if self.landmark is None or self.rate * (t - self.landmark) < RESCALE_EXPONENT:
            return None
        factor = math.exp(-self.rate * (t - self.landmark))
        self.landmark = t
        return factor
