"""Optimizer locks across ``fork()`` (shared by the NumPy optimizers and ``fusedopt.torch``).

Every optimizer serializes its steps (and state loads) with a re-entrant lock. A child forked
while *another* thread held that lock inherits it held by a thread that does not exist in the
child: the lock is never released, and the call it guarded never completes, so the state may be
half updated. After a fork, :func:`_after_fork_in_child` replaces each such lock by a
:class:`ForkedMidCall`, which raises instead of waiting forever; loading a state dict (which
replaces the state) installs a new lock. A lock held by the forking thread itself stays: that call
continues in the child and completes.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

#: every live optimizer that registered itself (weak: the set keeps none alive)
_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


class ForkedMidCall:
    """Stands in for the lock of an optimizer that another thread held when the process forked."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        raise RuntimeError(
            f"this {self.owner} optimizer was being stepped (or loaded) by another thread when the process "
            "forked; in this child process that call never completed, so its state may be half updated. "
            "Load a state dict (load_state_dict) or make a new optimizer"
        )

    def __exit__(self, *exc: Any) -> None:  # pragma: no cover - __enter__ always raises
        return None


def new_lock(opt: Any) -> "threading.RLock":
    """A fresh lock for ``opt``, which is registered for the fork handler."""
    _LIVE.add(opt)
    return threading.RLock()


def forked_mid_call(opt: Any) -> bool:
    """Whether ``opt``'s lock was lost to a fork (see the module docstring)."""
    return isinstance(opt.__dict__.get("_lock"), ForkedMidCall)


def _after_fork_in_child() -> None:
    """A lock held by a thread that does not exist in the child is never released: mark it."""
    for opt in list(_LIVE):
        lock = opt.__dict__.get("_lock")
        if lock is None or isinstance(lock, ForkedMidCall):
            continue
        if lock.acquire(blocking=False):  # free, or held by the forking thread itself (re-entrant)
            lock.release()
        else:
            owner = "fusedopt.torch" if type(opt).__module__ == "fusedopt.torch" else "fusedopt"
            opt._lock = ForkedMidCall(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
