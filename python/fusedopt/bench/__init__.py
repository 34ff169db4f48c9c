"""Microbenchmarks: fusedopt against NumPy, torch and DeepSpeed (when importable), run as
``python -m fusedopt.bench``.

Usage::

    python -m fusedopt.bench --quick               # < 10 s: float32 Adam at 2^12, 2^16, 2^20
    python -m fusedopt.bench                       # Momentum/RMSprop/Adam/Adagrad x f32/f64 x 2^10..2^24
    python -m fusedopt.bench --algorithms adam --dtypes float32 --sizes 12,16,20,24
    python -m fusedopt.bench --threads-crossover   # threads=1 vs 2, back to back and after idle
    python -m fusedopt.bench --models all          # whole-model Adam steps on parameter lists
    python -m fusedopt.bench --models all --algorithms radam,muon   # the same, other algorithms
    python -m fusedopt.bench --deepspeed           # float32 AdamW vs DeepSpeed's CPU Adam, 2^12..2^26
    python -m fusedopt.bench --json ...            # machine-readable results on stdout

Contenders (all update the same arrays, so they see the same memory layout and cache state):

``fusedopt``       :mod:`fusedopt.functional` with ``threads=None`` (the automatic thread policy);
``fusedopt-1t``    the same with ``threads=1``;
``numpy-textbook`` the formulas as NumPy expressions (temporaries, several passes), like
                   :mod:`fusedopt.reference`;
``numpy-inplace``  careful NumPy: preallocated scratch, ``out=`` on every ufunc, in-place updates;
``torch-fused``    ``torch.optim.<Alg>(fused=True)`` on ``torch.from_numpy`` views (Adam, AdamW,
                   Adagrad, SGD; Momentum as ``SGD(lr=lr*(1-beta), momentum=beta)``, which is the same
                   update for a constant learning rate); torch has no fused RMSprop;
``torch-foreach``  the same with ``foreach=True`` (on CPU: one ATen op per tensor operation);
``torch-forloop``  the same with ``foreach=False`` (torch's CPU default), for every algorithm whose
                   description names a torch.optim class; "x torch (fastest)": the fastest of the
                   three in the run;
``deepspeed``      DeepSpeed's compiled CPU Adam op (``adam_update``), float32 Adam/AdamW, when
                   DeepSpeed is importable (:mod:`fusedopt.bench.ds_adam`);
``deepspeed-step`` ``DeepSpeedCPUAdam.step()`` on one parameter, likewise;
``ceiling``        a native probe moving exactly the step's bytes with trivial arithmetic;
``copy``           ``np.copyto`` between two arrays whose total size equals the optimizer's working
                   set; its GB/s count ``2 * nbytes`` (read + write, STREAM style).

Bytes an optimizer step must move: read every array once, write every updated array once, i.e.
``(2 + 2 * number_of_state_arrays + 1) * itemsize`` per element: float32 Adam 28 B (read p, g, m, v;
write p, m, v), Momentum / RMSprop / Adagrad / SGD-with-momentum 20 B; a two-phase trust-ratio step
re-reads arrays after its norm pass (the spec's ``extra_passes``): float32 LAMB 40 B, LARS 28 B, and
its ceiling makes that re-read too. Effective GB/s = those bytes
/ time. "%copy" = effective GB/s / copy GB/s of the same run. An in-place read-modify-write stream
needs no write-allocate read, so a fused step can exceed 100 % of the copy figure (copy is a
single-threaded NumPy call).

Method: before anything is timed, each contender makes one step on the live arrays and its result
is compared with :mod:`fusedopt.reference` applied to a snapshot (fusedopt: bitwise; NumPy: within
2 ulp; torch and DeepSpeed: within 1e-5 relative); a contender that fails is reported as WRONG and
never timed. Then the contenders run in interleaved rounds (a new seeded random order each round);
a sample is the time of ``k`` consecutive steps with ``k`` chosen so that a sample takes >= ~2 ms,
right after one untimed step of the same contender (so no sample pays for waking threads that the
previous contender let fall asleep). Reported: median microseconds per step (and the best sample),
spread = IQR / median (cells marked ``~`` when above 10 %); every ratio (% of ceiling, % of copy,
speedups) is the median of the per-round ratios, which the bandwidth drifting between rounds does
not move. Progress goes to stderr, tables (or JSON) to stdout.

Arrays are separately allocated by :func:`fusedopt.arena.placed_empty`, each in its own slot, so
that the streams of one step do not alias in the cache (``--plain-alloc``: plain ``np.empty``).

Modules, by job: :mod:`~fusedopt.bench.specs` (the algorithms: one small description each, the
table every contender is built from), :mod:`~fusedopt.bench.contenders` (contender name ->
factory), :mod:`~fusedopt.bench.numpy_peer`, :mod:`~fusedopt.bench.ds_adam`,
:mod:`~fusedopt.bench.ceiling` (the peers), :mod:`~fusedopt.bench.arrays`,
:mod:`~fusedopt.bench.verify` (correctness guard), :mod:`~fusedopt.bench.timing`,
:mod:`~fusedopt.bench.run` (one configuration, a grid, the threads crossover),
:mod:`~fusedopt.bench.models` (whole-model steps), :mod:`~fusedopt.bench.report`,
:mod:`~fusedopt.bench.cli`.
"""

from __future__ import annotations

from .cli import main, parse_list, parse_sizes
from .contenders import CONTENDERS
from .models import (
    MODEL_SHAPES,
    Shape,
    digits_mlp_shapes,
    models_benchmark,
    print_models,
    resnet18_shapes,
    transformer_shapes,
)
from .report import header, plot, print_crossover, print_header, print_sizes, print_table
from .run import CROSSOVER_SIZES, DEFAULT_SIZES, QUICK_SIZES, fmt_n, run, run_config, threads_crossover
from .specs import ALGORITHMS, DEFAULT_ALGORITHMS, SPECS, STEP, Spec, bytes_per_element
from .timing import log

__all__ = [
    "ALGORITHMS",
    "CONTENDERS",
    "CROSSOVER_SIZES",
    "DEFAULT_ALGORITHMS",
    "DEFAULT_SIZES",
    "MODEL_SHAPES",
    "QUICK_SIZES",
    "SPECS",
    "STEP",
    "Shape",
    "Spec",
    "bytes_per_element",
    "digits_mlp_shapes",
    "fmt_n",
    "header",
    "log",
    "main",
    "models_benchmark",
    "parse_list",
    "parse_sizes",
    "plot",
    "print_crossover",
    "print_header",
    "print_models",
    "print_sizes",
    "print_table",
    "resnet18_shapes",
    "run",
    "run_config",
    "threads_crossover",
    "transformer_shapes",
]
