"""The benchmarks' noisy host: its workers load the CPU while the body runs, and are gone after it."""

import os
import sys
import time

import pytest

from benchmarks.host_noise import NoiseSpec, noise_spec, noisy_host


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_noise_levels_map_to_specs_and_unknown_ones_are_refused() -> None:
    assert noise_spec("none") is None
    assert noise_spec("spells") == NoiseSpec()
    with pytest.raises(ValueError, match="unknown noise level"):
        noise_spec("loud")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads CPU time from /proc")
def test_workers_spin_for_their_duty_and_stop_even_when_the_body_raises() -> None:
    spec = NoiseSpec(workers=2, busy_s=(30.0, 30.0), idle_s=(1.0, 1.0), duty=0.5, slice_s=0.01)
    with pytest.raises(RuntimeError), noisy_host(spec) as workers:
        assert len(workers) == 2 and all(w.is_alive() for w in workers)
        time.sleep(1.0)  # the workers' interpreters start, then spin half of each 10 ms
        before = [_cpu_seconds(w.pid) for w in workers]
        time.sleep(1.0)
        spun = [_cpu_seconds(w.pid) - b for w, b in zip(workers, before)]
        raise RuntimeError("the body fails")
    assert all(0.3 <= s <= 0.7 for s in spun), spun  # half of one second each, give or take scheduling
    assert all(not w.is_alive() for w in workers)
    with noisy_host(None) as none:
        assert none == []
