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

#: Serial below this many elements per call (all tensors of the call together). Chosen from
#: ``python -m fusedopt.bench --threads-crossover`` on the 2-core development machine (AMD EPYC
#: Zen 3, AVX2): 2 threads started to win at these sizes when the call follows an idle period.
SERIAL_BELOW: dict[str, int] = {
    "sgd": 1 << 16,
    "momentum": 1 << 16,
    "rmsprop": 1 << 15,
    "adam": 1 << 15,
    "adagrad": 1 << 15,
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
