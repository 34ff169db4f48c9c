#!/usr/bin/env python
"""Full sweep: every algorithm x float32/float64 x sizes 2^10..2^26 x every ISA this CPU supports.

    python benchmarks/sweep.py --out sweep.json
    python benchmarks/sweep.py --algorithms adam --dtypes float32 --sizes 16,20,24 --isas avx2,sse2

Uses :mod:`fusedopt.bench` (same contenders, correctness guard and interleaved timing). For each ISA
in ``fusedopt._core.supported_isas()`` the kernels are forced onto that ISA with the private test
hook ``_core._force_isa``; the automatically chosen ISA runs every contender (NumPy, torch, copy
probe), the other ISAs run fusedopt (policy and 1 thread), numpy-inplace and the copy probe so that
every ISA still has same-run ratios (``--all-contenders`` runs everything for every ISA).

The JSON (``{"header": ..., "runs": [{"isa": ..., "results": [...]}, ...]}``) is rewritten after
every configuration, so an interrupted sweep keeps what it measured. Peak memory at 2^26 float64
Adam is about 3 GiB (four 512 MiB arrays, two scratch arrays, the copy probe's two arrays).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict

from fusedopt import _core, bench
from fusedopt.bench.arrays import Allocator

SWEEP_SIZES = [1 << e for e in range(10, 27, 2)]
OTHER_ISA_CONTENDERS = ["fusedopt", "fusedopt-1t", "numpy-inplace", "copy"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sweep.json", help="JSON output path (default ./sweep.json)")
    ap.add_argument("--algorithms", type=bench.parse_list(bench.ALGORITHMS), default=list(bench.ALGORITHMS))
    ap.add_argument("--dtypes", type=bench.parse_list(("float32", "float64")), default=["float32", "float64"])
    ap.add_argument(
        "--sizes",
        type=bench.parse_sizes,
        default=SWEEP_SIZES,
        help="exponents of 2 (e.g. 10,14,18) or element counts; default 2^10..2^26 step 2^2",
    )
    supported = list(_core.supported_isas())
    ap.add_argument(
        "--isas",
        type=bench.parse_list(supported),
        default=None,
        help=f"comma list of {', '.join(supported)} (default all supported)",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--all-contenders", action="store_true", help="run NumPy/torch contenders for every ISA")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--plain-alloc", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no tables on stdout")
    args = ap.parse_args()

    automatic = _core.automatic_isa()
    isas = args.isas or supported
    isas = sorted(isas, key=lambda i: i != automatic)  # the automatic ISA first
    doc: Dict[str, Any] = {"header": bench.header(), "sizes": args.sizes, "runs": []}
    alloc = Allocator(args.plain_alloc).description
    doc["header"]["alloc"] = alloc
    t0 = time.perf_counter()

    def save() -> None:
        doc["seconds"] = time.perf_counter() - t0
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, args.out)

    for isa in isas:
        if isa == automatic or args.all_contenders:
            contenders = list(bench.CONTENDERS)
        else:
            contenders = list(OTHER_ISA_CONTENDERS)
        # DeepSpeed's op does not depend on fusedopt's ISA: compare with it in `python -m fusedopt.bench --deepspeed`
        contenders = [c for c in contenders if not c.startswith("deepspeed")]
        if args.no_torch:
            contenders = [c for c in contenders if not c.startswith("torch")]
        run: Dict[str, Any] = {"isa": isa, "automatic": isa == automatic, "results": []}
        doc["runs"].append(run)
        _core._force_isa(isa)
        try:
            bench.log(f"== ISA {isa} (active: {_core.active_isa()}) ==")
            for alg in args.algorithms:
                for dt in args.dtypes:
                    for n in args.sizes:
                        bench.log(f"{isa} {alg} {dt} n={bench.fmt_n(n)} ...")
                        res = bench.run_config(
                            alg, dt, n, contenders=contenders, rounds=args.rounds, plain_alloc=args.plain_alloc
                        )
                        run["results"].append(res)
                        save()
        finally:
            _core._force_isa(None)
        if not args.quiet:
            print(f"\n## ISA {isa}{' (automatic)' if isa == automatic else ' (forced)'}")
            bench.print_table(run["results"])
    if not args.quiet:
        print()
        bench.print_header(doc["header"], alloc)
        print(f"# wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    wrong = any("wrong" in c for r in doc["runs"] for res in r["results"] for c in res["contenders"].values())
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
