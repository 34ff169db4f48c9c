"""The NumPy route under mpirun (no torch): ``mpirun -n N python tests/zero_mpi_worker.py OUTDIR``.

Each rank steps a :class:`fusedopt.distributed.ShardedOptimizer` over an
:class:`~fusedopt.distributed.MPICommunicator` (AdamW, float32 with global-norm clipping, then
float64; LAMB float64) for 20 steps and pickles its parameters to ``OUTDIR/mpi_r<rank>.pkl``.
"""

from __future__ import annotations

import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusedopt.distributed import MPICommunicator, ShardedOptimizer
from zero_data import LR, SHAPES, STEPS, grads_for, init_params


def main(outdir: str) -> None:
    comm = MPICommunicator()
    out = {"torch_imported": None}
    for dt in ("float32", "float64"):
        opt = ShardedOptimizer(init_params(SHAPES, dt), "adamw", comm, lr=LR, max_grad_norm=5.0)
        for t in range(1, STEPS + 1):
            assert opt.step(grads_for(600, t, SHAPES, dt, comm.world_size, comm.rank)[1])
        out[dt] = [p.copy() for p in opt.params]
    opt = ShardedOptimizer(init_params(SHAPES, "float64"), "lamb", comm, lr=LR, weight_decay=0.01)  # (trust ratios)
    for t in range(1, STEPS + 1):
        assert opt.step(grads_for(610, t, SHAPES, "float64", comm.world_size, comm.rank)[1])
    out["lamb"] = [p.copy() for p in opt.params]
    out["torch_imported"] = "torch" in sys.modules
    with open(os.path.join(outdir, f"mpi_r{comm.rank}.pkl"), "wb") as f:
        pickle.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1])
