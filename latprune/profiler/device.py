"""Device fingerprints: what makes timings from two machines comparable or not."""

from __future__ import annotations

import hashlib
import json
import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Distinct (socket, core) pairs in /proc/cpuinfo, limited to the CPUs we may use."""
    cores = set()
    try:
        with open("/proc/cpuinfo") as f:
            socket = core = None
            for line in f:
                if line.startswith("physical id"):
                    socket = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    cores.add((socket, core))
                    socket = core = None
            if core is not None:
                cores.add((socket, core))
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(len(cores) or usable, usable))


def fingerprint(description: dict) -> str:
    """A short stable hash of a device description."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]
