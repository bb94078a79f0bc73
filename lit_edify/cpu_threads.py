"""Torch threads for the CPUs this process may really use.

PyTorch starts one intra-op thread per core it can run on (``sched_getaffinity``: ``taskset`` and cpusets are
respected) but does not see a CPU *quota* (``docker --cpus 1.5``, Kubernetes limits, systemd ``CPUQuota``). Under a
quota of q cores, more than q busy threads take turns on the quota, and every parallel operator waits for its
slowest thread. :func:`apply_cpu_quota` lowers the thread count to the whole cores of the quota (at least one); an
explicit ``OMP_NUM_THREADS`` is left alone.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["apply_cpu_quota", "quota_cores", "read_cpu_quota", "threads_for_quota"]

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def quota_cores(quota: str, period: str) -> float | None:
    """Cores granted by a CFS quota and period (the two fields of cgroup v2 ``cpu.max``, or v1's two files);
    None when there is no quota (``max`` or -1)."""
    quota, period = quota.strip(), period.strip()
    if quota in ("max", "-1") or not quota:
        return None
    q, p = int(quota), int(period)
    if q <= 0 or p <= 0:
        return None
    return q / p


def read_cpu_quota(v2: Path | None = None, v1: tuple[Path, Path] | None = None) -> float | None:
    """Cores of this process's cgroup CPU quota (v2 ``cpu.max``, else v1), None if there is none (or it cannot be
    read). ``v2`` / ``v1``: other files to read (default :data:`CGROUP_V2` / :data:`CGROUP_V1`)."""
    v2, v1 = v2 or CGROUP_V2, v1 or CGROUP_V1
    try:
        if v2.is_file():
            fields = v2.read_text().split()
            return quota_cores(fields[0], fields[1]) if len(fields) == 2 else None
        if v1[0].is_file() and v1[1].is_file():
            return quota_cores(v1[0].read_text(), v1[1].read_text())
    except (OSError, ValueError):
        return None
    return None


def threads_for_quota(current: int, cores: float | None) -> int:
    """Intra-op threads: ``current`` capped at the whole cores of the quota (at least 1)."""
    if cores is None:
        return current
    return max(1, min(current, math.floor(cores + 1e-9)))


def apply_cpu_quota() -> int | None:
    """Lower torch's intra-op threads to a CPU quota's whole cores; returns the new count, or None if unchanged
    (no quota, a quota at or above the current count, or ``OMP_NUM_THREADS`` set by the user)."""
    cores = None if os.environ.get("OMP_NUM_THREADS") else read_cpu_quota()
    if cores is None:
        return None
    import torch  # only when there is a quota to apply: `lit-edify --help` stays light

    current = torch.get_num_threads()
    threads = threads_for_quota(current, cores)
    if threads == current:
        return None
    torch.set_num_threads(threads)
    return threads
