"""Statistics of an experiment whose unit of assignment is the user.

A rate is conversions per impression, summed over an arm's users. Its users are the
independent units, so its variance is the delta method's for a ratio of per-user sums
(clicks of one user are not independent trials); differences are Welch-style normal
intervals with a two-sided p-value; sample-ratio mismatch is a chi-square test of the
users per arm against the configured traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
# Not scipy.stats: importing it took half a second of every serving process's start.
from scipy.special import chdtrc, ndtr

Z95 = 1.959963984540054
SRM_ALPHA = 0.001  # a mismatch this unlikely under the configured split is flagged


@dataclass
class RatioEstimate:
    rate: float
    variance: float

    @property
    def interval(self) -> tuple[float, float]:
        half = Z95 * math.sqrt(max(self.variance, 0.0))
        return self.rate - half, self.rate + half


def ratio(conversions: Sequence[float], impressions: Sequence[float]) -> RatioEstimate:
    """Sum(conversions) / sum(impressions) over users, with its delta-method variance."""
    x = np.asarray(conversions, dtype=np.float64)
    y = np.asarray(impressions, dtype=np.float64)
    n = len(y)
    if n == 0 or y.sum() == 0:
        return RatioEstimate(0.0, 0.0)
    rate = x.sum() / y.sum()
    if n < 2:
        return RatioEstimate(float(rate), float("inf"))
    mean_y = y.mean()
    residual = x - rate * y
    return RatioEstimate(float(rate), float(residual.var(ddof=1) / (n * mean_y**2)))


def difference(treatment: RatioEstimate, control: RatioEstimate) -> dict[str, float]:
    diff = treatment.rate - control.rate
    se = math.sqrt(max(treatment.variance + control.variance, 0.0))
    if se == 0 or not math.isfinite(se):
        return {"diff": diff, "low": diff, "high": diff, "p_value": 1.0 if diff == 0 else float("nan"),
                "relative": diff / control.rate if control.rate else 0.0}
    p = 2.0 * float(ndtr(-abs(diff) / se))
    return {"diff": diff, "low": diff - Z95 * se, "high": diff + Z95 * se, "p_value": float(p),
            "relative": diff / control.rate if control.rate else 0.0}


def sample_ratio_mismatch(users: Sequence[int], traffic: Sequence[float]) -> dict[str, float | bool]:
    observed = np.asarray(users, dtype=np.float64)
    total = observed.sum()
    if total == 0:
        return {"p_value": 1.0, "mismatch": False}
    expected = np.asarray(traffic, dtype=np.float64) * total
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    p = float(chdtrc(len(observed) - 1, chi2))
    return {"chi2": chi2, "p_value": p, "mismatch": p < SRM_ALPHA}
