"""Running worlds of ranks for the distributed tests (a helper module, not a test module).

A worker script (tests/zero_worker.py, tests/zero_whole_worker.py) defines its worlds as
``{name: (world size, scenarios, deadline seconds, group timeout seconds)}`` and a
``rank_main(name, rank, world, outdir)`` that runs the scenarios on one rank and pickles each
scenario's result to ``OUTDIR/<scenario><world size>_r<rank>.pkl``. :func:`launch` forks each world
from the worker process (torch imported once, before any thread pool starts), waits with the
world's deadline, kills what is left and writes ``OUTDIR/<world>_exit.pkl``; :func:`collect`, on the
test side, runs the worker script in a subprocess with a total timeout and loads every result.
Nothing can hang the test run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Sequence, Tuple

#: world name -> (world size, scenarios in order, deadline in seconds, group timeout in seconds)
Worlds = Dict[str, Tuple[int, Sequence[str], float, float]]


def launch(worlds: Worlds, names: Iterable[str], rank_main: Callable[[str, int, int, str], None], outdir: str,
           rank0_decides: Iterable[str] = ()) -> None:  # fmt: skip
    """Run the worlds ``names`` one after the other; in the worlds of ``rank0_decides`` the
    launcher stops waiting once rank 0 is done (another rank hangs on purpose)."""
    os.environ["ZERO_OUT"] = outdir
    ctx = mp.get_context("fork")
    early = set(rank0_decides)
    for wname in names:
        world, _, deadline, _ = worlds[wname]
        t0 = time.monotonic()
        procs = [ctx.Process(target=rank_main, args=(wname, r, world, outdir)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(max(0.1, deadline - (time.monotonic() - t0)))
            if wname in early:
                break
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        with open(os.path.join(outdir, f"{wname}_exit.pkl"), "wb") as f:
            pickle.dump({"codes": [p.exitcode for p in procs], "seconds": time.monotonic() - t0}, f)
        print(f"{wname}: {time.monotonic() - t0:.1f} s, exit codes {[p.exitcode for p in procs]}", flush=True)


def collect(worker: Path, outdir: Path, worlds: Worlds, names: Sequence[str], timeout: float) -> Dict[str, Any]:
    """Run ``worker OUTDIR NAME...`` and load its results: ``res["<scenario><world size>"]`` is the
    list of every rank's result (None for a rank that wrote none), ``res[... + "_exit"]`` the world's
    exit codes and seconds, ``res["_log"]`` the worker's output."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(worker), str(outdir), *names], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)
    res: Dict[str, Any] = {"_log": proc.stdout}
    for wname in names:
        world, scenarios = worlds[wname][:2]
        with open(outdir / f"{wname}_exit.pkl", "rb") as f:
            exit_info = pickle.load(f)
        for sc in scenarios:
            ranks = []
            for r in range(world):
                path = outdir / f"{sc}{world}_r{r}.pkl"
                if path.exists():
                    with open(path, "rb") as f:
                        ranks.append(pickle.load(f))
                else:
                    ranks.append(None)
            res[f"{sc}{world}"] = ranks
            res[f"{sc}{world}_exit"] = exit_info
    return res
