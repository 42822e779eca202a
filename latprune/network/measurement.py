"""``Measurement``: repeated timings of one thing, summarised, with the raw samples kept."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from latprune.network.quiet_reference import quiet_reference_ms


@dataclass(frozen=True)
class Measurement:
    """Summary of repeated timings of one thing, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    spread: float  # relative disagreement between round medians: (max - min) / median
    # The raw timings grouped by round, when they were taken in this process (rows read back from a
    # profile database carry only the summary). Not part of equality: two summaries compare by value.
    rounds: tuple[tuple[float, ...], ...] = field(default=(), compare=False, repr=False)

    def to_json(self, samples: bool = False) -> dict:
        """The summary; with ``samples``, the raw per-round timings too."""
        data = asdict(self)
        if not samples:
            data.pop("rounds")
        else:
            data["rounds"] = [list(r) for r in self.rounds]
        return data

    @classmethod
    def from_samples(cls, rounds: Sequence[Sequence[float]]) -> "Measurement":
        """Summarise timings grouped by round (each round's samples taken together)."""
        samples = sorted(t for r in rounds for t in r)
        if not samples:
            raise ValueError("no timing samples")
        median = statistics.median(samples)
        round_medians = [statistics.median(r) for r in rounds if r]
        spread = (max(round_medians) - min(round_medians)) / median if median > 0 else 0.0
        return cls(
            median_ms=median,
            p10_ms=_quantile(samples, 0.1),
            p90_ms=_quantile(samples, 0.9),
            runs=len(samples),
            spread=spread,
            rounds=tuple(tuple(float(t) for t in r) for r in rounds),
        )


def paired_ratio(network: Measurement, reference: Measurement) -> float:
    """Median over the quiet rounds of ``network``'s round median over ``reference``'s, both timed in the same
    rounds.

    A host that slows down for a while (seconds to minutes, as shared virtual machines do)
    slows both networks of a round, so the per-round ratio cancels what the pooled medians keep.
    But not alike: on the 2-core AVX2 host, a process spinning on one core moved resnet56's
    0.5x plan from 0.524 of the dense network (quiet) to 0.40 (the core taken 30% of the time)
    and 0.28 (all the time). So only quiet rounds count (:func:`paired_quiet_rounds`). Falls back to
    the ratio of medians when the rounds do not pair up.
    """
    if not network.rounds or len(network.rounds) != len(reference.rounds):
        return network.median_ms / reference.median_ms
    return statistics.median(_round_ratios(network, reference))


QUIET_ROUND_TOLERANCE = 1.05


def quiet_rounds(reference: Measurement, tolerance: float = QUIET_ROUND_TOLERANCE) -> list[int]:
    """The rounds in which the reference (the dense network) ran at its quiet-host time: its round median at most
    ``tolerance`` times the lower quartile of its round medians (the profiler's quiet time: slow spells, even
    half of the time, stay out of it). Empty only when no round holds a timing."""
    medians = [statistics.median(r) if r else math.inf for r in reference.rounds]
    timed = [m for m in medians if math.isfinite(m)]
    if not timed:
        return []
    quiet = quiet_reference_ms(timed)
    return [i for i, m in enumerate(medians) if m <= tolerance * quiet]


# A pruned network's own rounds spread 2-6.5% on the quiet AVX2 host (planner_budget's checks), so its rounds are
# judged more loosely than the dense network's: only a visit that a spell slowed is left out, not the upper half of
# its noise (that would bias its ratio low).
NETWORK_LOAD_TOLERANCE = 1.10


def paired_quiet_rounds(network: Measurement, reference: Measurement) -> list[int]:
    """The quiet rounds of the reference (:func:`quiet_rounds`) in which the network did not run slowed either
    (:data:`NETWORK_LOAD_TOLERANCE`): a slow spell that begins after the reference's visit of a round makes
    that round's ratio too high, and the reference's time cannot tell. When no round is quiet for both (a host
    whose spells alternate with the visits), the reference's quiet rounds."""
    network_quiet = set(quiet_rounds(network, NETWORK_LOAD_TOLERANCE))
    reference_quiet = quiet_rounds(reference)
    return [i for i in reference_quiet if i in network_quiet] or reference_quiet


def _round_ratios(network: Measurement, reference: Measurement) -> list[float]:
    pairs = [(network.rounds[i], reference.rounds[i]) for i in paired_quiet_rounds(network, reference)]
    return [statistics.median(a) / statistics.median(b) for a, b in pairs if a and b]


CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedRatio:
    """A network's latency relative to a reference timed in the same rounds: the median of the per-round
    ratios, with a distribution-free confidence interval of that median (order statistics of the ratios).

    ``rounds``: the quiet rounds the ratio stands on (:func:`paired_quiet_rounds`). ``covered``: whether the interval
    reaches the confidence asked for (fewer than six rounds cannot reach 95%; the interval is then the range of
    the ratios).
    """

    ratio: float
    low: float
    high: float
    rounds: int
    confidence: float = CONFIDENCE
    covered: bool = True

    @property
    def half_width(self) -> float:
        """The interval's larger side relative to the ratio (0.015: +-1.5%)."""
        return max(self.ratio - self.low, self.high - self.ratio) / self.ratio

    @property
    def speedup(self) -> float:
        return 1 / self.ratio

    def to_json(self) -> dict:
        return {**asdict(self), "half_width": self.half_width}

    def describe(self) -> str:
        return (f"{self.ratio:.4f} of the reference ({100 * self.confidence:.0f}% interval {self.low:.4f}-"
                f"{self.high:.4f}, +-{100 * self.half_width:.1f}%, {self.rounds} quiet rounds)")


def paired_interval(network: Measurement, reference: Measurement, confidence: float = CONFIDENCE) -> PairedRatio:
    """:func:`paired_ratio` with the confidence interval of its median, from the order statistics of the
    per-round ratios (no assumption about the host's noise)."""
    ratios = sorted(_round_ratios(network, reference))
    if not ratios:
        raise ValueError("no paired rounds")
    trim, covered = median_interval_rank(len(ratios), confidence)
    return PairedRatio(statistics.median(ratios), ratios[trim], ratios[len(ratios) - 1 - trim], len(ratios),
                       confidence, covered)


def median_interval_rank(n: int, confidence: float = CONFIDENCE) -> tuple[int, bool]:
    """How many order statistics to leave out at each end of ``n`` sorted samples so that the remaining range
    holds the median with at least ``confidence`` (binomial, p = 1/2); and whether that level is reached."""
    tail = (1 - confidence) / 2
    cumulative, trim = 0.0, 0
    for k in range(n):
        cumulative += math.comb(n, k) / 2 ** n  # P(at most k samples below the median)
        if cumulative > tail or 2 * (k + 1) >= n:
            break
        trim = k + 1
    covered = trim > 0 or 1 - 2 / 2 ** n >= confidence
    return trim, covered


def _quantile(sorted_samples: Sequence[float], q: float) -> float:
    position = q * (len(sorted_samples) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_samples) - 1)
    return sorted_samples[low] + (sorted_samples[high] - sorted_samples[low]) * (position - low)
