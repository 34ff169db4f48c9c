"""Pathological curvature: GD, Momentum, RMSprop and Adam on the Rosenbrock function and an ill-conditioned quadratic.

Each optimizer is fusedopt's functional API applied to a 2-element float64 array (the point
``(x, y)``) with its analytic gradient, one in-place call per step. The trajectories are drawn over
contour plots of both functions, with the loss against the step number underneath.

* Rosenbrock ``f = (1-x)^2 + 100 (y-x^2)^2``: a curved, narrow valley with the minimum at (1, 1).
  Gradient descent must keep its step small enough for the steep walls and then crawls along the
  flat valley floor; Momentum (an exponential moving average of gradients, Ng's form) averages the
  wall-to-wall oscillations out and moves faster along the valley; RMSprop and Adam divide each
  coordinate by its running RMS gradient, so the slow direction gets a larger step.
* Ill-conditioned quadratic ``f = (x^2 + 50 y^2) / 2`` (condition number 50): GD zig-zags across the
  narrow direction while barely moving along the wide one; Momentum smooths the zig-zag; RMSprop and
  Adam rescale the two axes.

With a constant learning rate RMSprop (no bias correction, no momentum) cannot shrink its steps: once
the gradient is tiny its running RMS decays too and the step stays about ``lr`` per coordinate, which
shows as spikes in the loss near the minimum.

    python examples/rosenbrock.py                      # ~2 s; writes docs/images/rosenbrock.png
    python examples/rosenbrock.py --steps 3000 --out /tmp/rosenbrock.png
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, List, Tuple

import numpy as np

import fusedopt.functional as F

Problem = Tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def rosenbrock(p: np.ndarray) -> np.ndarray:
    """Also evaluates on a grid: ``p`` of shape (2, ...)."""
    x, y = p
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_grad(p: np.ndarray) -> np.ndarray:
    x, y = p
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


KAPPA = 50.0


def quadratic(p: np.ndarray) -> np.ndarray:
    x, y = p
    return 0.5 * (x * x + KAPPA * y * y)


def quadratic_grad(p: np.ndarray) -> np.ndarray:
    x, y = p
    return np.array([x, KAPPA * y])


def make_stepper(name: str, lr: float) -> Callable[[np.ndarray, np.ndarray, int], None]:
    """One in-place fusedopt.functional update of the point ``p`` from the gradient ``g`` at step ``t``."""
    s1, s2 = np.zeros(2), np.zeros(2)
    if name == "GD":
        return lambda p, g, t: F.sgd(p, g, lr=lr)
    if name == "Momentum":
        return lambda p, g, t: F.momentum(p, g, s1, step=t, lr=lr, beta=0.9)
    if name == "RMSprop":
        return lambda p, g, t: F.rmsprop(p, g, s1, lr=lr, alpha=0.99)
    if name == "Adam":
        return lambda p, g, t: F.adam(p, g, s1, s2, step=t, lr=lr, beta1=0.9, beta2=0.999)
    raise ValueError(name)


def run(problem: Problem, start: Tuple[float, float], name: str, lr: float, steps: int) -> Tuple[np.ndarray, List[float]]:
    f, grad = problem
    p = np.array(start, dtype=np.float64)
    step = make_stepper(name, lr)
    path, losses = [p.copy()], [float(f(p))]
    for t in range(1, steps + 1):
        step(p, grad(p), t)  # p is updated in place
        path.append(p.copy())
        losses.append(float(f(p)))
    return np.array(path), losses


#: per problem: function, gradient, start, plot window, learning rate per optimizer
PROBLEMS = {
    "Rosenbrock": dict(
        problem=(rosenbrock, rosenbrock_grad), start=(-1.5, 2.0), xlim=(-2.0, 2.0), ylim=(-1.0, 3.0), minimum=(1, 1),
        steps=1500,
        lr={"GD": 1e-3, "Momentum": 4e-3, "RMSprop": 1e-2, "Adam": 5e-2},
    ),
    f"quadratic, condition number {KAPPA:g}": dict(
        problem=(quadratic, quadratic_grad), start=(-9.0, 1.6), xlim=(-10.0, 3.0), ylim=(-2.5, 2.5), minimum=(0, 0),
        steps=250,
        lr={"GD": 0.038, "Momentum": 0.03, "RMSprop": 0.1, "Adam": 0.3},
    ),
}
COLORS = {"GD": "tab:red", "Momentum": "tab:green", "RMSprop": "tab:purple", "Adam": "tab:blue"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per optimizer and problem (default: 1500 on Rosenbrock, 250 on the quadratic)")
    ap.add_argument("--out", default="docs/images/rosenbrock.png", help="output PNG ('' to skip)")
    args = ap.parse_args()

    results: Dict[str, Dict[str, Tuple[np.ndarray, List[float]]]] = {}
    for title, spec in PROBLEMS.items():
        results[title] = {}
        print(f"{title}: start {spec['start']}, minimum {spec['minimum']}")
        steps = args.steps or spec["steps"]
        for name, lr in spec["lr"].items():
            path, losses = run(spec["problem"], spec["start"], name, lr, steps)
            results[title][name] = (path, losses)
            hit = next((t for t, v in enumerate(losses) if v < 1e-3), None)
            print(f"  {name:8s} lr={lr:<6g} final ({path[-1, 0]: .4f}, {path[-1, 1]: .4f})  f={losses[-1]:.3e}  "
                  f"f<1e-3 after {hit if hit is not None else '>' + str(steps)} steps")  # fmt: skip
    if args.out:
        plot(results, args.out)


def plot(results: Dict[str, Dict[str, Tuple[np.ndarray, List[float]]]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6.2 * len(results), 9.2),
                             gridspec_kw={"height_ratios": [3, 1.6]})  # fmt: skip
    for col, (title, runs) in enumerate(results.items()):
        spec = PROBLEMS[title]
        f = spec["problem"][0]
        ax = axes[0, col]
        xs = np.linspace(*spec["xlim"], 400)
        ys = np.linspace(*spec["ylim"], 400)
        X, Y = np.meshgrid(xs, ys)
        Z = f(np.stack([X, Y]))
        levels = np.logspace(np.log10(max(Z.min(), 1e-3)), np.log10(Z.max()), 25)
        ax.contour(X, Y, Z, levels=levels, cmap="Greys", linewidths=0.6, alpha=0.8)
        every = max(1, (len(next(iter(runs.values()))[1]) - 1) // 40)
        for k, (name, (path, losses)) in enumerate(runs.items()):
            ax.plot(path[:, 0], path[:, 1], "-", color=COLORS[name], lw=2.6 - 0.5 * k, alpha=0.85,
                    label=f"{name} (lr {spec['lr'][name]:g}): f = {losses[-1]:.1e}")  # fmt: skip
            ax.plot(path[::every, 0], path[::every, 1], "o", color=COLORS[name], ms=3.5 - 0.5 * k)
        ax.plot(*spec["start"], "ko", ms=5)
        ax.plot(*spec["minimum"], "k*", ms=12)
        ax.set_xlim(spec["xlim"])
        ax.set_ylim(spec["ylim"])
        ax.set_title(f"{title}: {len(path) - 1} steps (dots every {every})")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend(fontsize=8, loc="lower right" if col == 0 else "upper right")
        ax2 = axes[1, col]
        for name, (_, losses) in runs.items():
            ax2.semilogy(np.maximum(losses, 1e-16), color=COLORS[name], label=name)
        ax2.set_xlabel("step")
        ax2.set_ylabel("f")
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(fontsize=8)
    fig.suptitle("fusedopt.functional on 2-element arrays: pathological curvature")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
