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


# Vector and matrix extensions that change which kernels a runtime picks (and so every timing).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "sve2")


def cpu_identity() -> dict:
    """What ``model name`` leaves out: the CPU family/model numbers and its vector extensions.

    Two machines sold under one name (a virtual "AMD EPYC" on Zen 3 with AVX2 one day, on Zen 5
    with AVX-512 the next) time the same network up to 2.5x apart, so both go into the fingerprint.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor describes them all
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return {"cpu_id": platform.machine(), "isa": ""}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    ident = " ".join(f"{k} {fields[k]}" for k in ("vendor_id", "cpu family", "model", "CPU implementer", "CPU part")
                     if k in fields)
    return {"cpu_id": ident or platform.machine(), "isa": " ".join(f for f in ISA_FLAGS if f in flags)}


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
