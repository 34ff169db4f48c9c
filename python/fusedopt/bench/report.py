"""Reporting: the machine header, the per-configuration table, the size-by-contender table
(``--deepspeed``), the threads-crossover table and the GB/s plot."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict, List, Sequence

import numpy as np

from .. import _core, _threads
from .._config import show_config
from . import ds_adam
from .contenders import CONTENDERS, torch_module
from .run import fmt_n
from .timing import NOISY, SAMPLE_SECONDS, log

__all__ = ["header", "plot", "print_crossover", "print_header", "print_sizes", "print_table"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header() -> Dict[str, Any]:
    """Machine and build facts recorded with every run."""
    cfg = show_config(print_=False)
    torch = torch_module()
    info: Dict[str, Any] = {
        "fusedopt": cfg["version"],
        "active_isa": _core.active_isa(),
        "supported_isas": cfg["supported_isas"],
        "openmp": cfg["openmp"],
        "num_threads": _threads.get_num_threads(),
        "serial_below": cfg["serial_below"],
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "deepspeed": ds_adam.status() or None,
    }
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        info["loadavg"] = None
    return info


def print_header(h: Dict[str, Any], alloc: str) -> None:
    print(f"# fusedopt {h['fusedopt']} | active ISA {h['active_isa']} (supported: {', '.join(h['supported_isas'])})"
          f" | OpenMP {'on' if h['openmp'] else 'off'}, threads {h['num_threads']}"
          f" | serial_below {h['serial_below']}")  # fmt: skip
    print(f"# CPU: {h['cpu']} ({h['logical_cpus']} logical CPUs) | Python {h['python']} | NumPy {h['numpy']}"
          f" | torch {h['torch'] or 'not importable'}"
          f"{'' if h['torch'] is None else ' (' + str(h['torch_threads']) + ' threads)'}"
          f" | load average at start {h['loadavg']}")  # fmt: skip
    ds = h.get("deepspeed")
    if ds:
        if "reason" in ds:
            print(f"# DeepSpeed CPU Adam: skipped: {ds['reason']}")
        elif "op_load_s" in ds:
            print(f"# DeepSpeed {ds['version']}: cpu_adam op built/loaded in {ds['op_load_s']:.1f} s before timing"
                  " (first use compiles it with -march=native; later runs load the cached build)")  # fmt: skip
    print(f"# arrays: {alloc}; timing: interleaved rounds, sample >= {SAMPLE_SECONDS * 1e3:g} ms of "
          f"back-to-back steps, median; '~' = spread (IQR/median) > {NOISY:.0%}")  # fmt: skip
    load = h.get("loadavg")
    cpus = h.get("logical_cpus") or 1
    if load and load[0] > 0.5 * cpus:
        print(f"# WARNING: load average {load[0]} on {cpus} CPUs: other processes are running; multi-threaded "
              "timings include scheduler time slices (milliseconds) and every number is noisy")  # fmt: skip


def print_table(results: List[Dict[str, Any]]) -> None:
    present = [c for c in CONTENDERS if any(c in r["contenders"] for r in results)]
    short = {"fusedopt": "fusedopt", "fusedopt-1t": "fusedopt 1t", "numpy-textbook": "np textbook",
             "numpy-inplace": "np inplace", "torch-fused": "torch fused", "torch-foreach": "torch foreach",
             "torch-forloop": "torch forloop", "deepspeed": "DS raw op", "deepspeed-step": "DS class step", "ceiling": "ceiling",
             "copy": "copy"}  # fmt: skip
    cell = 17
    print()
    print("per contender: µs/step and effective GB/s (bytes the step must move / time)")
    head = f"{'algorithm':<9} {'dtype':<7} {'size':>5} {'B/el':>4} |"
    head += "".join(f" {short[c]:^{cell}}|" for c in present)
    head += f" {'fo %ceil':>8} {'fo %copy':>8} {'x inplace':>9} {'x textbk':>8}"
    has_torch = any(c.startswith("torch-") for c in present)
    if has_torch:
        head += f" {'x torch (fastest)':>19}"
    if "deepspeed" in present:
        head += f" {'x DS':>7}"
    print(head)
    print("-" * len(head))
    noisy = []
    for r in results:
        line = f"{r['algorithm']:<9} {r['dtype']:<7} {fmt_n(r['n']):>5} {r['bytes_per_element']:>4} |"
        for c in present:
            info = r["contenders"].get(c)
            if info is None:
                txt = "-"
            elif "wrong" in info:
                txt = "WRONG"
            else:
                mark = "~" if info["spread"] > NOISY else " "
                if info["spread"] > NOISY:
                    noisy.append(f"{r['algorithm']} {r['dtype']} {fmt_n(r['n'])} {c}: spread {info['spread']:.0%}")
                txt = f"{_fmt_us(info['us_per_step'])}{mark}{info['gbps']:6.1f}"
            line += f" {txt:>{cell}}|"
        for key in ("pct_ceiling", "pct_copy"):
            pct = r["contenders"].get("fusedopt", {}).get(key)
            line += f" {pct:7.0f}%" if pct is not None else f" {'-':>8}"
        for base, w in (("numpy-inplace", 9), ("numpy-textbook", 8)):
            sp = r.get(f"speedup_vs_{base}")
            line += f" {sp:{w - 1}.2f}x" if sp is not None else f" {'-':>{w}}"
        if has_torch:
            sp = r.get("speedup_vs_torch")
            best = str(r.get("torch_best", "")).replace("torch-", "")
            line += f" {sp:8.2f}x {best:<9}" if sp is not None else f" {'-':>19}"
        if "deepspeed" in present:
            sp = r.get("speedup_vs_deepspeed")
            line += f" {sp:6.2f}x" if sp is not None else f" {'-':>7}"
        print(line)
    notes = sorted({info["note"] for r in results for info in r["contenders"].values() if info.get("note")})
    for nt in notes:
        print(f"note: torch momentum runs as {nt} (same update for a constant lr; torch has no EMA momentum)")
    if has_torch:
        print("x torch (fastest) = time of torch.optim's fastest CPU implementation in this run (fused, foreach or"
              " forloop: named) / fusedopt's time; '-': torch.optim has no such optimizer")  # fmt: skip
    if noisy:
        print(f"noisy (spread > {NOISY:.0%}; the machine was busy or the step is short): " + "; ".join(noisy))
    wrong = [f"{r['algorithm']} {r['dtype']} {fmt_n(r['n'])} {c}: {i['wrong']}"
             for r in results for c, i in r["contenders"].items() if "wrong" in i]  # fmt: skip
    if wrong:
        print("WRONG RESULTS (not timed): " + "; ".join(wrong))


def _fmt_us(us: float) -> str:
    if us >= 1e4:
        return f"{us:9.0f}"
    if us >= 100:
        return f"{us:9.1f}"
    return f"{us:9.2f}"


def print_crossover(res: Dict[str, Any]) -> None:
    t = res["threads"]
    print()
    print(f"threads crossover, {res['dtype']}, explicit threads=1 vs threads={t}; µs/step, median (and best = "
          f"minimum); 'after idle' = {res['idle_s'] * 1e3:g} ms sleep before each timed step")  # fmt: skip
    head = (f"{'algorithm':<9} {'size':>5} | {'b2b 1t':>8} {'b2b ' + str(t) + 't':>8} {'ratio':>6} |"
            f" {'idle 1t':>8} {'idle ' + str(t) + 't':>8} {'ratio':>7} | {'best 1t':>8} {'best ' + str(t) + 't':>8}"
            f" {'ratio':>6}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for alg, a in res["algorithms"].items():
        for r in a["rows"]:
            flag = "~" if max(r["idle_1_spread"], r["idle_t_spread"]) > NOISY else " "
            print(f"{alg:<9} {fmt_n(r['n']):>5} | {r['b2b_1_us']:8.2f} {r['b2b_t_us']:8.2f} {r['b2b_speedup']:5.2f}x |"
                  f" {r['idle_1_us']:8.2f} {r['idle_t_us']:8.2f} {r['idle_speedup']:5.2f}x{flag} |"
                  f" {r['idle_1_min_us']:8.2f} {r['idle_t_min_us']:8.2f} {r['idle_min_speedup']:5.2f}x")  # fmt: skip
    print()
    print(f"ratio = time(1 thread) / time({t} threads); 'best' = fastest after-idle sample of each; "
          f"'~' = after-idle spread > {NOISY:.0%}")  # fmt: skip
    print(
        f"SERIAL_BELOW suggestion (fusedopt._threads): the smallest size from which {t} threads win by >10% "
        "after idle at that and every larger measured size (medians; in brackets: using the best samples):"
    )
    for alg, a in res["algorithms"].items():
        st, sm, fi, fb = a["stable_idle_win"], a["stable_idle_win_min"], a["first_idle_win"], a["first_b2b_win"]
        rec = fmt_n(st) if st is not None else "none"
        print(f"  {alg:<9} {rec:>5} [{fmt_n(sm) if sm else 'none'}]  (first after-idle win {fmt_n(fi) if fi else '-'},"
              f" first back-to-back win {fmt_n(fb) if fb else '-'}; current {a['current_serial_below']})")  # fmt: skip
    print(
        "  ('none': 2 threads never won reliably up to the largest size measured — keep those sizes serial, or"
        " the machine was busy)"
    )




def plot(results: List[Dict[str, Any]], path: str) -> None:
    """GB/s against size, one panel per (algorithm, dtype), a line per contender; the same-run
    ceiling (the native probe moving the step's bytes) dashed. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise SystemExit("--plot needs matplotlib: pip install 'fusedopt[bench]'") from exc
    panels = sorted({(r["algorithm"], r["dtype"]) for r in results})
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax, (algo, dt) in zip(axes.ravel(), panels):
        rs = sorted((r for r in results if r["algorithm"] == algo and r["dtype"] == dt), key=lambda r: r["n"])
        for c in CONTENDERS:
            pts = [(r["n"], r["contenders"][c]["gbps"]) for r in rs if "gbps" in r["contenders"].get(c, {})]
            if not pts:
                continue
            styles: Dict[str, Dict[str, Any]] = {"ceiling": {"ls": "--", "color": "k", "lw": 1.5},
                                                 "copy": {"ls": ":", "color": "gray"}}  # fmt: skip
            style = styles.get(c, {})
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=c, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (bytes the step must move / time)")
        ax.set_title(f"{algo} {dt}, {rs[0]['bytes_per_element']} B/element")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("fusedopt step throughput vs contenders and the same-run ceiling")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")




SIZE_LABELS = {"fusedopt": "fusedopt functional", "fusedopt-1t": "fusedopt functional, threads=1",
               "deepspeed": "DeepSpeed raw op", "deepspeed-step": "DeepSpeedCPUAdam.step()",
               "ceiling": "ceiling (traffic probe)", "copy": "np.copyto"}  # fmt: skip


def print_sizes(results: List[Dict[str, Any]], threads: int, contenders: Sequence[str]) -> None:
    """One (algorithm, dtype), sizes as columns: µs per step (best sample and median) per
    contender, then paired ratios against fusedopt and percentages of the same-run ceiling
    (``--deepspeed``: the DeepSpeed comparison table)."""
    if not results:
        return
    sizes = [r["n"] for r in results]
    present = [c for c in contenders if any(c in r["contenders"] for r in results)]
    first = results[0]
    w = 9
    label_w = 54
    cols = "".join(f" | {fmt_n(n):>{w}}" for n in sizes)
    print()
    print(f"{first['dtype']} {first['algorithm']}, µs per step, {threads} thread{'s' if threads > 1 else ''} allowed:"
          " best sample (median in the second block); ratios and % are medians of per-round ratios")  # fmt: skip
    print(f"{'':{label_w}s}{cols}")

    def cell(r: Dict[str, Any], c: str, key: str) -> str:
        info = r["contenders"].get(c)
        if info is None:
            return f"{'-':>{w}}"
        if "wrong" in info:
            return f"{'WRONG':>{w}}"
        return f"{_fmt_us(info[key]).strip():>{w}}"

    for key, what in (("best_us", "best"), ("us_per_step", "median")):
        for c in present:
            print(f"{SIZE_LABELS.get(c, c) + ', ' + what:{label_w}s}" + "".join(f" | {cell(r, c, key)}" for r in results))
    for base in ("deepspeed", "deepspeed-step"):
        if base in present:
            vals = [r.get(f"speedup_vs_{base}") for r in results]
            print(f"{'x ' + SIZE_LABELS[base] + ' (its time / fusedopt time)':{label_w}s}"
                  + "".join(f" | {v:{w - 1}.2f}x" if v is not None else f" | {'-':>{w}}" for v in vals))  # fmt: skip
    if "ceiling" in present:
        for c in present:
            if c in ("ceiling", "copy"):
                continue
            vals = [r["contenders"].get(c, {}).get("pct_ceiling") for r in results]
            print(f"{SIZE_LABELS.get(c, c) + ', % of ceiling':{label_w}s}"
                  + "".join(f" | {v:{w - 1}.0f}%" if v is not None else f" | {'-':>{w}}" for v in vals))  # fmt: skip
    wrong = [f"{fmt_n(r['n'])} {c}: {i['wrong']}" for r in results for c, i in r["contenders"].items() if "wrong" in i]
    if wrong:
        print("WRONG RESULTS (not timed): " + "; ".join(wrong))
