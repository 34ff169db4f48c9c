"""Thread policy (in the style of scikit-learn's ``_openmp_helpers``).

* ``set_num_threads(n)`` sets the number of threads fusedopt uses; ``None`` restores the default.
* The default honours ``OMP_NUM_THREADS``; otherwise it is the number of CPUs this process may run
  on (``os.sched_getaffinity``), capped by OpenMP's own limit. Without OpenMP it is 1.
* A call with ``threads=None`` runs serially when the call updates fewer elements than the
  algorithm's crossover below (waking a sleeping OpenMP team costs tens of microseconds, more than
  the work of a small step). An explicit ``threads=n`` is used as given.
"""

from __future__ import annotations

import os
from typing import Optional

from . import _core

#: Serial below this many elements per call (all tensors of the call together). Measured with
#: ``python -m fusedopt.bench --threads-crossover`` (float32, threads=1 vs 2) on the 2-core
#: development machine (AMD EPYC, AVX-512), 2026-11-22. Back to back, 2 threads win from 2^15-2^16
#: elements (1.2-1.7x); but in a training loop the step follows milliseconds of other work, the
#: OpenMP workers are asleep, and waking them costs tens of microseconds: "after idle" (5 ms sleep
#: before each step) 2 threads lost up to 2^17 and won from 2^18-2^19 (Adam 1.4x at 2^19, 1.6x at
#: 2^20). 2^18 = 256 Ki elements (1 MiB of float32 parameters) is where they break even after idle;
#: PERFORMANCE.md §3 found 64-256 Ki on the Zen 3 machine. Pass ``threads=`` explicitly to override.
SERIAL_BELOW: dict[str, int] = {
    "sgd": 1 << 18,
    "momentum": 1 << 18,
    "rmsprop": 1 << 18,
    "adam": 1 << 18,
    "adagrad": 1 << 18,
}

_user_threads: Optional[int] = None


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _env_threads() -> Optional[int]:
    raw = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return None


def default_num_threads() -> int:
    """The thread count used when :func:`set_num_threads` was not called."""
    if not _core.openmp_enabled:
        return 1
    env = _env_threads()
    if env is not None:
        return env
    return max(1, min(_core.omp_max_threads(), _cpu_count()))


def get_num_threads() -> int:
    """The number of threads fusedopt's kernels use for large steps."""
    return _user_threads if _user_threads is not None else default_num_threads()


def set_num_threads(n: Optional[int]) -> int:
    """Set the number of threads for large steps (``None``: back to the default). Returns the old value."""
    global _user_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int or None, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
    old = get_num_threads()
    _user_threads = n
    return old


def resolve(threads: Optional[int], n_elements: int, algorithm: str) -> int:
    """The thread count for one native call updating ``n_elements`` elements in total."""
    if threads is None:
        if n_elements < SERIAL_BELOW[algorithm]:
            return 1
        return get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads
