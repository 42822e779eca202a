"""Variant visits kept only when the dense network, timed just before and just after them, ran at its quiet time.

Measured on the 2-core AVX2 host under slow spells (another process on a core, issue #26): load does not
slow every network alike. resnet56's 0.5x plan paired with its dense network measured 0.524 of it quiet and
0.402 with one core loaded 30% of the time, so dividing a loaded visit's layer times by the dense network's
slowdown stores layer times that a quiet host never shows (resnet32 held out: ratio MAPE 10.7% on a profile
made so under spells, 2.0% on a quiet one; 2.3% on one made under the same spells with quiet brackets, where
484 visits were timed again and the profile took 719 s). So the profiler times visits in brackets of ``reference_every``
between two checks of the dense network; a bracket is kept when both checks are within
:data:`~latprune.network.measurement.QUIET_ROUND_TOLERANCE` of the quiet time
(:func:`~latprune.network.quiet_reference.quiet_reference_ms`), else its visits are timed again in smaller
brackets once a check is quiet. A visit loaded :data:`MAX_RETIMES` times is kept, divided by the slowdown as
before, and counted, so a host that is never quiet still gets a profile and says so.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from latprune.network.measurement import QUIET_ROUND_TOLERANCE
from latprune.network.quiet_reference import quiet_reference_ms, slowdown_factor
from latprune.profiler.backends import RoundSample

T = TypeVar("T")

MAX_RETIMES = 3  # loaded tries of one visit before it is kept, scaled by the dense slowdown
QUIET_WAIT_S = 10.0  # longest wait for a quiet check before a bracket (the spells measured lasted up to 8 s)


@dataclass
class VisitCounts:
    """How the host's load changed the visits of a profile."""

    retimed: int = 0  # visits thrown away because a check beside them found the host loaded
    kept_loaded: int = 0  # visits kept, scaled by the dense slowdown, after MAX_RETIMES loaded tries


class QuietVisits:
    """Brackets of visits between checks of the dense network (see the module docstring).

    ``check`` times the dense network once and returns its median (ms); ``checks``: its earlier checks on this
    host, extended with every check that bounds a bracket (the quiet time is their lower quartile; the checks
    made while waiting for a quiet one are left out, or a long spell would make its own load the quiet time);
    ``record`` is told each of those.
    """

    def __init__(self, check: Callable[[], float], checks: list[float], bracket: int,
                 record: Callable[[float], None] = lambda ms: None, counts: VisitCounts | None = None):
        self._check, self._record = check, record
        self.checks, self.bracket = checks, max(1, bracket)
        self.counts = VisitCounts() if counts is None else counts  # shared by the batches of one profile

    @property
    def quiet_ms(self) -> float:
        return quiet_reference_ms(self.checks)

    def bounding_check(self) -> float:
        """Time the dense network for a bracket's bound (or the quiet time's first checks) and keep it."""
        return self._kept(self._check())

    def _kept(self, ms: float) -> float:
        self.checks.append(ms)
        self._record(ms)
        return ms

    def _loaded(self, check_ms: float) -> bool:
        return check_ms > QUIET_ROUND_TOLERANCE * self.quiet_ms

    def _quiet_check(self) -> tuple[float, bool]:
        """A check for a bracket to start from: checks until one is quiet or :data:`QUIET_WAIT_S` pass; returns it
        and whether to wait again (not after a wait in vain)."""
        ms, waiting_since = self._check(), time.perf_counter()
        while self._loaded(ms):
            if time.perf_counter() - waiting_since >= QUIET_WAIT_S:
                return self._kept(ms), False
            ms = self._check()
        return self._kept(ms), True

    def visit(self, items: Sequence[T], sample: Callable[[T], RoundSample],
              keep: Callable[[T, RoundSample], None]) -> None:
        """Time every item once (``sample``) and hand each kept sample, divided by how much slower than quiet the
        host ran beside it, to ``keep``. A wait for a quiet check that ends in vain is not repeated in this call:
        a host loaded for long costs each visit at most ``MAX_RETIMES`` more tries, not a wait each."""
        queue, tries, size = deque(range(len(items))), [0] * len(items), self.bracket
        before, patient = self._quiet_check()
        while queue:
            if self._loaded(before) and patient:
                before, patient = self._quiet_check()
            group = [queue.popleft() for _ in range(min(size, len(queue)))]
            samples = [sample(items[i]) for i in group]
            after = self.bounding_check()
            quiet = not (self._loaded(before) or self._loaded(after))
            factor = slowdown_factor(max(before, after), self.quiet_ms)
            again = []
            for i, taken in zip(group, samples):
                if quiet or tries[i] >= MAX_RETIMES:
                    self.counts.kept_loaded += not quiet
                    keep(items[i], taken.scaled(factor))
                else:
                    tries[i] += 1
                    self.counts.retimed += 1
                    again.append(i)
            queue.extendleft(reversed(again))
            size = self.bracket if quiet else max(1, size // 2)
            before = after
