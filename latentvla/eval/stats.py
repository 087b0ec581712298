"""Error bars and paired tests for success rates (pure Python: no numpy / scipy needed).

- `wilson_interval(k, n)`: the Wilson score 95% interval of a binomial proportion k/n,
  center (p + z²/2n) / (1 + z²/n), half-width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n),
  z = 1.959964. Unlike the normal ("Wald") interval it stays inside [0, 1] and is not empty at
  0/n or n/n, which is where robot success rates live.
- `newcombe_interval(k1, n1, k2, n2)`: 95% interval of the difference p2 - p1 of two
  independent proportions from their Wilson intervals (Newcombe's hybrid score method).
- `mcnemar_exact(b, c)`: exact two-sided McNemar test of paired binary outcomes: a binomial test
  of the discordant pairs (b = only A succeeded, c = only B succeeded) against p = 1/2:
  p = min(1, 2·Σ_{i≤min(b,c)} C(b+c, i) / 2^(b+c)), and p = 1 when b + c = 0.
- `t_interval(values)`: mean and 95% Student-t interval mean ± t(0.975, n-1)·sd/√n (across
  seeds: the spread of whole training + evaluation runs, not only episode noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964

# Two-sided 95% quantiles t(0.975, df) of Student's t distribution, df = 1..30.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval (lo, hi) of successes/n; None when n == 0."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float] | None:
    """95% interval of p2 - p1 (independent samples), from the two Wilson intervals."""
    w1, w2 = wilson_interval(k1, n1, z), wilson_interval(k2, n2, z)
    if w1 is None or w2 is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p2 - p1
    lo = d - math.sqrt((p2 - w2[0]) ** 2 + (w1[1] - p1) ** 2)
    hi = d + math.sqrt((w2[1] - p2) ** 2 + (p1 - w1[0]) ** 2)
    return max(-1.0, lo), min(1.0, hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pair counts b and c."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integers; one rounding at the division


def t_quantile_975(df: int) -> float:
    """t(0.975, df): table for df <= 30, a Cornish-Fisher expansion beyond (error < 1e-5)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def t_interval(values: Sequence[float], clip: tuple[float, float] | None = (0.0, 1.0)) -> dict:
    """Mean and 95% t-interval of `values` (e.g. one success rate per seed).

    -> {"n", "mean", "sd", "half_width", "ci95": [lo, hi]}; with one value the interval is None
    (no spread can be measured from one run). `clip` bounds the interval (rates: [0, 1]).
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "half_width": None, "ci95": None}
    mean = sum(vals) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "half_width": None, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if clip is not None:
        lo, hi = max(clip[0], lo), min(clip[1], hi)
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "ci95": [lo, hi]}


def format_rate(rate: float | None, ci: Sequence[float] | None = None, digits: int = 1) -> str:
    """"72.0% [58.3, 82.5]" (percent; the interval in brackets when known)."""
    if rate is None:
        return "-"
    text = f"{100 * rate:.{digits}f}%"
    if ci is not None:
        text += f" [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"
    return text


def ci_list(successes: int, n: int) -> list[float] | None:
    """The Wilson interval as a JSON-friendly [lo, hi] (rounded to 6 digits), None when n == 0."""
    w = wilson_interval(successes, n)
    return None if w is None else [round(w[0], 6), round(w[1], 6)]
