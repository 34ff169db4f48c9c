"""The command line of ``python -m fusedopt.bench`` (see the package docstring and benchmarks/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from .. import _core, _threads
from . import ds_adam
from .arrays import Allocator
from .contenders import CONTENDERS, torch_module
from .models import MODEL_ALGORITHMS, MODEL_SHAPES, model_optimizer, models_benchmark, print_models
from .report import header, plot, print_crossover, print_header, print_sizes, print_table
from .run import CROSSOVER_SIZES, DEFAULT_SIZES, QUICK_SIZES, run, threads_crossover
from .specs import ALGORITHMS, DEFAULT_ALGORITHMS

__all__ = ["main", "parse_list", "parse_sizes"]

#: ``--deepspeed``: float32 AdamW at the sizes of issue 12's table, against DeepSpeed's CPU Adam
DEEPSPEED_SIZES = tuple(1 << e for e in (12, 14, 16, 18, 20, 24, 26))
DEEPSPEED_CONTENDERS = ("fusedopt", "deepspeed", "deepspeed-step", "ceiling")


def parse_sizes(text: str) -> List[int]:
    """'12,16,20' (exponents of 2, values <= 48), '2^12', or element counts (values > 48)."""
    sizes = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok.startswith("2^"):
            sizes.append(1 << int(tok[2:]))
        else:
            v = int(tok)
            if v < 0:
                raise argparse.ArgumentTypeError(f"bad size {tok!r}")
            sizes.append(1 << v if v <= 48 else v)
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def parse_list(allowed: Sequence[str]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        items = [x.strip().lower() for x in text.split(",") if x.strip()]
        if items == ["all"]:
            return list(allowed)
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (got {text!r})")
        return items

    return parse


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fusedopt.bench",
        description="Benchmark fusedopt's fused steps against NumPy (and torch when importable).",
        epilog="The table goes to stdout, progress to stderr. On a shared machine compare ratios within one run.",
    )
    ap.add_argument("--quick", action="store_true", help="float32 Adam at 2^12, 2^16, 2^20 vs NumPy only (seconds)")
    ap.add_argument("--threads-crossover", action="store_true", help="threads=1 vs 2 (back to back / after idle)")
    ap.add_argument(
        "--models",
        type=parse_list(tuple(MODEL_SHAPES)),
        default=None,
        help=f"whole-model float32 steps on parameter lists: comma list of {', '.join(MODEL_SHAPES)} or 'all'"
        " (Adam, or each of --algorithms)",
    )
    ap.add_argument(
        "--algorithms",
        type=parse_list(MODEL_ALGORITHMS),
        default=None,
        help=f"comma list of {', '.join(ALGORITHMS)} or 'all' (default {','.join(DEFAULT_ALGORITHMS)}); with"
        f" --models also {', '.join(a for a in MODEL_ALGORITHMS if a not in ALGORITHMS)} (default adam)",
    )
    ap.add_argument(
        "--dtypes",
        type=parse_list(("float32", "float64")),
        default=None,
        help="comma list of float32, float64 (default both)",
    )
    ap.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="comma list: exponents of 2 (e.g. 12,16,20), 2^k, or element counts (> 48)",
    )
    ap.add_argument(
        "--contenders",
        type=parse_list(CONTENDERS),
        default=None,
        help=f"comma list of {', '.join(CONTENDERS)} (default all that apply)",
    )
    ap.add_argument("--no-torch", action="store_true", help="skip the torch contenders (and DeepSpeed's)")
    ap.add_argument("--no-deepspeed", action="store_true", help="skip DeepSpeed's CPU Adam even when importable")
    ap.add_argument(
        "--deepspeed",
        action="store_true",
        help="float32 AdamW at 2^12..2^26 vs DeepSpeed's CPU Adam (raw op and DeepSpeedCPUAdam.step) and the"
        " ceiling, sizes as columns (needs deepspeed: see benchmarks/README.md)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fusedopt.set_num_threads(N) (and torch.set_num_threads(N)); crossover compares 1 vs N",
    )
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7, quick 5)")
    ap.add_argument("--plain-alloc", action="store_true", help="plain np.empty arrays (no alignment/stagger)")
    ap.add_argument("--json", action="store_true", help="print JSON results to stdout instead of tables")
    ap.add_argument("--plot", metavar="FILE.png", default=None, help="GB/s vs size per contender (needs matplotlib)")
    return ap


def _has_model_optimizer(name: str) -> bool:
    try:
        model_optimizer(name)
    except ValueError:
        return False
    return True


def _dump(doc: Dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=1)
    print()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            _parser().error("--threads must be >= 1")
        _threads.set_num_threads(args.threads)
        torch = None if args.no_torch else torch_module()
        if torch is not None:
            torch.set_num_threads(args.threads)  # also DeepSpeed's op: it runs on torch's OpenMP runtime
    if args.rounds is not None and args.rounds < 1:
        _parser().error("--rounds must be >= 1")
    use_deepspeed = not (args.no_torch or args.no_deepspeed)
    if args.algorithms and not args.models:
        if args.algorithms == list(MODEL_ALGORITHMS):  # 'all'
            args.algorithms = list(ALGORITHMS)
        only_models = [a for a in args.algorithms if a not in ALGORITHMS]
        if only_models:
            _parser().error(f"--algorithms {','.join(only_models)}: only with --models (no element-wise size benchmark)")

    if args.threads_crossover:
        h = header()
        alloc = Allocator().description
        h["alloc"] = alloc
        t = args.threads if args.threads is not None else 2
        if t < 2:
            t = 2
        res = threads_crossover(
            args.algorithms or DEFAULT_ALGORITHMS,
            args.sizes or CROSSOVER_SIZES,
            threads=t,
            rounds=args.rounds or 7,
            dtype=(args.dtypes or ["float32"])[0],
        )
        if args.json:
            _dump({"header": h, "threads_crossover": res})
        else:
            print_header(h, alloc)
            if not _core.openmp_enabled or (os.cpu_count() or 1) < 2:
                print("# note: OpenMP disabled or a single CPU: threads > 1 cannot win here")
            print_crossover(res)
        return 0

    if args.models:
        algorithms = args.algorithms or ["adam"]
        if not args.no_torch and torch_module() is not None:
            runnable = [a for a in algorithms if _has_model_optimizer(a)]
            if runnable != algorithms and args.algorithms != list(MODEL_ALGORITHMS):  # ('all': those that run)
                _parser().error(f"--models: fusedopt.torch has no class for {set(algorithms) - set(runnable)}")
            algorithms = runnable
        if use_deepspeed and "adam" in algorithms:
            ds_adam.load()  # first use compiles: before anything is timed, reported in the header
        h = header()
        res_models = [r for alg in algorithms
                      for r in models_benchmark(args.models, rounds=args.rounds or 7, use_torch=not args.no_torch,
                                                use_deepspeed=use_deepspeed, algorithm=alg)]  # fmt: skip
        alloc = "FlatParams for the arena; NumPy / torch allocations otherwise"
        if args.json:
            _dump({"header": h, "models": res_models})
        else:
            print_header(h, alloc)
            print_models(res_models)
        return 1 if any(r["wrong"] for r in res_models) else 0

    if args.deepspeed:
        algorithms = args.algorithms or ["adamw"]
        dtypes = args.dtypes or ["float32"]
        sizes = args.sizes or list(DEEPSPEED_SIZES)
        contenders = args.contenders or list(DEEPSPEED_CONTENDERS)
        rounds = args.rounds or 7
    elif args.quick:
        algorithms = args.algorithms or ["adam"]
        dtypes = args.dtypes or ["float32"]
        sizes = args.sizes or list(QUICK_SIZES)
        contenders = args.contenders or ["fusedopt", "fusedopt-1t", "numpy-textbook", "numpy-inplace", "ceiling", "copy"]
        rounds = args.rounds or 5
    else:
        algorithms = args.algorithms or list(DEFAULT_ALGORITHMS)
        dtypes = args.dtypes or ["float32", "float64"]
        sizes = args.sizes or list(DEFAULT_SIZES)
        contenders = args.contenders or list(CONTENDERS)
        rounds = args.rounds or 7
    if args.no_torch:
        contenders = [c for c in contenders if not c.startswith(("torch", "deepspeed"))]
    if not use_deepspeed:
        contenders = [c for c in contenders if not c.startswith("deepspeed")]
    if any(c.startswith("deepspeed") for c in contenders) and any(a in ds_adam.ALGORITHMS for a in algorithms):
        ds_adam.load()  # first use compiles: before anything is timed, reported in the header
    alloc = Allocator(args.plain_alloc).description
    h = header()
    h["alloc"] = alloc
    t0 = time.perf_counter()
    results = run(algorithms, dtypes, sizes, contenders=contenders, rounds=rounds, plain_alloc=args.plain_alloc)
    doc: Dict[str, Any] = {"header": h, "results": results, "seconds": time.perf_counter() - t0}
    if args.plot:
        plot(results, args.plot)
    if args.json:
        _dump(doc)
    else:
        print_header(h, alloc)
        if args.deepspeed:
            for alg in algorithms:
                for dt in dtypes:
                    rows = [r for r in results if r["algorithm"] == alg and r["dtype"] == dt]
                    print_sizes(rows, _threads.get_num_threads(), contenders)
        else:
            print_table(results)
        print(f"# {time.perf_counter() - t0:.1f} s; load average at end "
              f"{[round(x, 2) for x in os.getloadavg()]}")  # fmt: skip
    return 1 if any("wrong" in i for r in results for i in r["contenders"].values()) else 0
