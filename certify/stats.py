"""Rates with exact intervals and paired tests between defenses.

Every bypass rate carries k, n, alpha and an exact Clopper-Pearson interval; a rate over
zero samples is an explicit abstain (rate None), never a silent zero. Two defenses run on
the same samples are compared with McNemar's test on the discordant pairs; many such tests in
one run are corrected together with Holm-Bonferroni (``holm``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from guard.errors import ToolkitError

# Above this many discordant pairs the exact tail is summed in floating point by scipy;
# below it, in exact rational arithmetic.
_EXACT_LIMIT = 2000


def _check_counts(k: int, n: int, where: str) -> tuple[int, int]:
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ToolkitError(f"{where}: counts must be integers, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ToolkitError(f"{where}: need 0 <= k <= n, got k={k}, n={n}")
    return k, n


def _check_count(x: int, where: str, name: str) -> int:
    if isinstance(x, bool) or int(x) != x or x < 0:
        raise ToolkitError(f"{where}: {name} must be a non-negative integer, got {x!r}")
    return int(x)


def _check_alpha(alpha: float, where: str) -> float:
    if not 0.0 < float(alpha) < 1.0:
        raise ToolkitError(f"{where}: alpha must lie in (0, 1), got {alpha!r}")
    return float(alpha)


def confidence_label(alpha: float) -> str:
    """The confidence level of ``alpha`` as shown to people: 0.05 -> "95%", 0.1 -> "90%", 0.005 -> "99.5%"."""
    alpha = _check_alpha(alpha, "confidence_label")
    return f"{round(100 * (1 - alpha), 6):g}%"


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion, k successes of n.

    Raises ``ToolkitError`` for n == 0: there is no interval without samples (``Rate``
    turns that case into an explicit abstain).
    """
    k, n = _check_counts(k, n, "clopper_pearson")
    alpha = _check_alpha(alpha, "clopper_pearson")
    if n == 0:
        raise ToolkitError("clopper_pearson: n == 0, no samples to bound (abstain instead)")
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=1.0 - alpha, method="exact")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Rate:
    """k of n with an exact (1 - alpha) Clopper-Pearson interval; n == 0 abstains.

    Arguments: ``k`` successes (e.g. recovered valid samples), ``n`` trials (valid samples),
    ``alpha`` (0.05 gives a 95% interval). ``rate``, ``ci_low`` and ``ci_high`` are None when
    ``n == 0``.

    Example::

        Rate.of(23, 24).to_dict()
        # {'k': 23, 'n': 24, 'alpha': 0.05, 'rate': 0.958.., 'ci_low': 0.788.., 'ci_high': 0.998.., ...}
    """

    k: int
    n: int
    alpha: float
    rate: float | None
    ci_low: float | None
    ci_high: float | None

    @classmethod
    def of(cls, k: int, n: int, alpha: float = 0.05) -> Rate:
        k, n = _check_counts(k, n, "Rate")
        alpha = _check_alpha(alpha, "Rate")
        if n == 0:
            return cls(k, n, alpha, None, None, None)
        low, high = clopper_pearson(k, n, alpha)
        return cls(k, n, alpha, k / n, low, high)

    @property
    def abstain(self) -> bool:
        return self.n == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "abstain": self.abstain}

    def __str__(self) -> str:
        if self.abstain:
            return "abstain (n=0)"
        level = confidence_label(self.alpha)
        return f"{self.k}/{self.n} = {self.rate:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] ({level} CP)"


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired binary outcomes of two methods over the same samples.

    ``b``: pairs where the first method succeeds and the second does not; ``c``: the reverse.
    ``n_pairs`` counts all pairs (concordant included). ``method`` is ``exact`` (two-sided
    binomial test of b against Binomial(b + c, 1/2)), ``chi2`` (with continuity correction)
    or ``chi2_uncorrected``; ``statistic`` is b for the exact test, the chi-square otherwise.
    """

    b: int
    c: int
    n_pairs: int
    statistic: float
    p_value: float
    method: str

    @property
    def n_discordant(self) -> int:
        return self.b + self.c

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_discordant": self.n_discordant}


def _exact_two_sided_half(b: int, c: int) -> float:
    """P-value of the two-sided binomial test of min(b, c) under Binomial(b + c, 1/2)."""
    n, low = b + c, min(b, c)
    if n == 0 or b == c:
        return 1.0
    if n <= _EXACT_LIMIT:
        tail = Fraction(sum(math.comb(n, i) for i in range(low + 1)), 2**n)
        return float(min(Fraction(1), 2 * tail))
    from scipy.stats import binom

    return float(min(1.0, 2.0 * binom.cdf(low, n, 0.5)))


def mcnemar(b: int, c: int, method: str = "exact", n_pairs: int | None = None) -> McNemarResult:
    """McNemar's test from the discordant counts ``b`` and ``c``.

    ``exact`` (default) is right for the small samples of this project; the chi-square
    versions are the large-sample approximations. With no discordant pairs p = 1.
    """
    b, c = _check_count(b, "mcnemar", "b"), _check_count(c, "mcnemar", "c")
    n_pairs = b + c if n_pairs is None else int(n_pairs)
    if n_pairs < b + c:
        raise ToolkitError(f"mcnemar: n_pairs={n_pairs} is smaller than the {b + c} discordant pairs")
    if method == "exact":
        return McNemarResult(b, c, n_pairs, float(b), _exact_two_sided_half(b, c), method)
    if method in ("chi2", "chi2_uncorrected"):
        if b + c == 0:
            return McNemarResult(b, c, n_pairs, 0.0, 1.0, method)
        from scipy.stats import chi2

        diff = abs(b - c) - (1 if method == "chi2" else 0)
        stat = max(diff, 0) ** 2 / (b + c)
        return McNemarResult(b, c, n_pairs, float(stat), float(chi2.sf(stat, 1)), method)
    raise ToolkitError(f"mcnemar: method must be 'exact', 'chi2' or 'chi2_uncorrected', got {method!r}")


def paired_table(first: Iterable[bool], second: Iterable[bool]) -> tuple[int, int, int, int]:
    """Counts (both, first only, second only, neither) of two aligned boolean sequences."""
    first, second = list(first), list(second)
    if len(first) != len(second):
        raise ToolkitError(f"paired_table: outcome lists differ in length ({len(first)} vs {len(second)})")
    both = sum(1 for x, y in zip(first, second, strict=True) if x and y)
    only_first = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    only_second = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return both, only_first, only_second, len(first) - both - only_first - only_second


def mcnemar_paired(first: Iterable[bool], second: Iterable[bool], method: str = "exact") -> McNemarResult:
    """McNemar's test on two aligned boolean outcome sequences (same samples, same order)."""
    both, only_first, only_second, neither = paired_table(first, second)
    return mcnemar(only_first, only_second, method, n_pairs=both + only_first + only_second + neither)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input order (None entries stay None, not counted).

    With m tests and raw p-values sorted ascending p_(1) <= ... <= p_(m), the adjusted
    p_(i) is max over j <= i of min(1, (m - j + 1) p_(j)): it controls the family-wise error
    rate at any alpha under any dependence between the tests, which is what a table of many
    defense x budget comparisons needs before a "significant" reads as one.

    Example::

        holm([0.01, 0.04, 0.03])  # [0.03, 0.06, 0.06]
    """
    values: list[float | None] = []
    for p in p_values:
        if p is None:
            values.append(None)
            continue
        if isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
            raise ToolkitError(f"holm: p-values must lie in [0, 1], got {p!r}")
        values.append(float(p))
    present = sorted((p, i) for i, p in enumerate(values) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


@dataclass(frozen=True)
class MedianResult:
    """A median with its distribution-free interval: ``[low, high]`` is ``[x_(j), x_(n+1-j)]`` of the sorted
    values, the widest pair of order statistics with coverage >= ``1 - alpha`` for the true median
    (``coverage``: its exact coverage). Values may be ``inf`` (censored: larger than anything measured),
    so a median or bound of ``inf`` says only "above the largest budget tried"."""

    median: float
    low: float
    high: float
    n: int
    n_censored: int
    coverage: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


def median_interval(values: Sequence[float], alpha: float = 0.05) -> MedianResult:
    """The median of ``values`` and an exact order-statistic interval (binomial with p = 1/2), right-censored
    values given as ``inf``. With too few values for any pair to reach ``1 - alpha`` the interval is
    ``[0, inf]`` (nothing is claimed)."""
    alpha = _check_alpha(alpha, "median interval")
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ToolkitError("median interval: no values")
    if any(math.isnan(x) for x in xs):
        raise ToolkitError("median interval: NaN among the values")
    median = xs[(n - 1) // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    # P(x_(j) <= m <= x_(n+1-j)) = 1 - 2 P(Bin(n, 1/2) <= j - 1); take the largest j that keeps it >= 1 - alpha
    tail, j = Fraction(0), 0
    weights = [Fraction(math.comb(n, i), 2 ** n) for i in range(n + 1)]
    while j + 1 <= (n + 1) // 2 and 1 - 2 * (tail + weights[j]) >= 1 - alpha:
        tail += weights[j]
        j += 1
    if j == 0:
        return MedianResult(median, 0.0, math.inf, n, sum(math.isinf(x) for x in xs), 1.0)
    return MedianResult(median, xs[j - 1], xs[n - j], n, sum(math.isinf(x) for x in xs), float(1 - 2 * tail))


def recovered_curve(minimal: Sequence[float], budgets: Sequence[float]) -> list[float]:
    """The fraction of samples recovered at a budget <= b, for each b of ``budgets`` (censored: ``inf``)."""
    if not minimal:
        raise ToolkitError("recovered curve: no samples")
    return [sum(m <= b for m in minimal) / len(minimal) for b in budgets]
