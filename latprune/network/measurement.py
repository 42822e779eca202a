"""``Measurement``: repeated timings of one thing, summarised, with the raw samples kept."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


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
    """Median over rounds of ``network``'s round median over ``reference``'s, both timed in the same rounds.

    A host that slows down for a while (seconds to minutes, as shared virtual machines do)
    slows both networks of a round alike, so the per-round ratio cancels what the pooled
    medians keep. Falls back to the ratio of medians when the rounds do not pair up.
    """
    if not network.rounds or len(network.rounds) != len(reference.rounds):
        return network.median_ms / reference.median_ms
    return statistics.median(statistics.median(a) / statistics.median(b)
                             for a, b in zip(network.rounds, reference.rounds) if a and b)


def _quantile(sorted_samples: Sequence[float], q: float) -> float:
    position = q * (len(sorted_samples) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_samples) - 1)
    return sorted_samples[low] + (sorted_samples[high] - sorted_samples[low]) * (position - low)
