"""Population-based minimisers over a box: cat swarm (CSO), biogeography (BBO), Jaya.

Each takes ``f(pop: (P, D)) -> (P,)`` (the whole population evaluated in one call, so
the objective can vectorise), a box ``lower, upper`` (arrays of length D, or scalars
with ``dim``), a budget (``pop_size``, ``iters``) and a ``seed`` (int, SeedSequence or
Generator: equal seeds give bit-identical runs), and returns :class:`OptResult`.

- :func:`cso`  Chu, Tsai & Pan (2006). Each iteration every cat is put in tracing mode
  with probability MR (mixture ratio), else in seeking mode. Seeking: SMP copies of the
  cat (with SPC the cat itself is one of them), in each copy every dimension is chosen
  with probability CDC and moved to ``x * (1 ± SRD)``; one copy is picked by roulette
  with ``P_i = (FS_max - FS_i) / (FS_max - FS_min)`` (all equal -> uniform). Tracing:
  ``v = w v + r c1 (x_best - x)`` (r ~ U[0,1] per dimension), ``|v| <= vmax * (upper - lower)``,
  ``x = x + v``. Positions are clipped to the box.
- :func:`bbo`  Simon (2008). Habitats sorted by cost; rank k (0 = best) gets emigration
  ``mu_k = (P - k) / (P + 1)`` and immigration ``lambda_k = 1 - mu_k``. Migration: each
  SIV of habitat k is, with probability lambda_k, replaced by the SIV of an emigrating
  habitat chosen by roulette on mu. Mutation: each SIV with probability
  ``mutation_prob`` gets Gaussian noise of std ``mutation_scale * (upper - lower)``.
  Elitism: the ``elites`` best habitats replace the worst of the new generation.
- :func:`jaya` Rao (2016): ``x' = x + r1 (best - |x|) - r2 (worst - |x|)``, kept if better.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Objective = Callable[[np.ndarray], np.ndarray]


@dataclass
class OptResult:
    x: np.ndarray  # best position found (D,)
    f: float  # its objective value
    history: np.ndarray = field(repr=False)  # best-so-far value after init and each iteration
    n_evals: int = 0


def _setup(lower, upper, dim, seed):
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    if lo.ndim == 0 or hi.ndim == 0:
        if dim is None:
            raise ValueError("scalar bounds need dim")
        lo, hi = np.broadcast_to(lo, (dim,)).copy(), np.broadcast_to(hi, (dim,)).copy()
    if lo.shape != hi.shape or lo.ndim != 1:
        raise ValueError(f"lower/upper must be 1-D of equal length, got {lo.shape} and {hi.shape}")
    if np.any(hi <= lo):
        raise ValueError("every upper bound must exceed its lower bound")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return lo, hi, rng


def _evaluate(f: Objective, pop: np.ndarray) -> np.ndarray:
    vals = np.asarray(f(pop), dtype=np.float64).reshape(-1)
    if vals.shape[0] != pop.shape[0]:
        raise ValueError(f"objective returned {vals.shape[0]} values for {pop.shape[0]} candidates")
    return np.where(np.isfinite(vals), vals, np.inf)


def cso(f: Objective, lower, upper, *, dim: int | None = None, pop_size: int = 20, iters: int = 100,
        mr: float = 0.2, smp: int = 5, srd: float = 0.2, cdc: float = 0.8, spc: bool = True,
        c1: float = 2.0, w: float = 0.7, vmax: float = 0.2, seed=None) -> OptResult:  # fmt: skip
    """Cat swarm optimisation (minimisation); see the module docstring."""
    lo, hi, rng = _setup(lower, upper, dim, seed)
    if smp < 1 or pop_size < 1 or iters < 0:
        raise ValueError("cso: smp, pop_size >= 1 and iters >= 0 required")
    d = lo.shape[0]
    width = hi - lo
    vlim = vmax * width
    x = rng.uniform(lo, hi, (pop_size, d))
    v = rng.uniform(-vlim, vlim, (pop_size, d))
    fx = _evaluate(f, x)
    n_evals = pop_size
    b = int(np.argmin(fx))
    best_x, best_f = x[b].copy(), float(fx[b])
    history = [best_f]
    n_new = smp - 1 if spc else smp  # copies that need an evaluation
    for _ in range(iters):
        tracing = rng.random(pop_size) < mr
        seek = np.flatnonzero(~tracing)
        trace = np.flatnonzero(tracing)
        cands = []
        if len(seek) and n_new > 0:
            base = np.repeat(x[seek][:, None, :], n_new, axis=1)  # (S, n_new, D)
            change = rng.random(base.shape) < cdc
            sign = np.where(rng.random(base.shape) < 0.5, -1.0, 1.0)
            copies = np.clip(np.where(change, base * (1.0 + sign * srd), base), lo, hi)
            cands.append(copies.reshape(-1, d))
        if len(trace):
            r = rng.random((len(trace), d))
            v[trace] = np.clip(w * v[trace] + r * c1 * (best_x - x[trace]), -vlim, vlim)
            cands.append(np.clip(x[trace] + v[trace], lo, hi))
        if not cands:
            history.append(best_f)
            continue
        allc = np.concatenate(cands)
        fall = _evaluate(f, allc)
        n_evals += len(allc)
        if len(seek) and n_new > 0:
            ns = len(seek)
            fs = fall[: ns * n_new].reshape(ns, n_new)
            cs = copies
            if spc:  # the cat's own position is one of the SMP candidates
                fs = np.concatenate([fx[seek][:, None], fs], axis=1)
                cs = np.concatenate([x[seek][:, None, :], copies], axis=1)
            fmax = fs.max(axis=1, keepdims=True)
            fmin = fs.min(axis=1, keepdims=True)
            span = fmax - fmin
            finite = np.isfinite(span) & (span > 0)
            prob = np.where(finite, (fmax - fs) / np.where(finite, span, 1.0), 1.0)
            prob = np.where(np.isfinite(prob), prob, 0.0)
            prob[~np.any(prob > 0, axis=1)] = 1.0
            cum = np.cumsum(prob, axis=1)
            u = rng.random((ns, 1)) * cum[:, -1:]
            pick = np.minimum((cum <= u).sum(axis=1), fs.shape[1] - 1)
            x[seek] = cs[np.arange(ns), pick]
            fx[seek] = fs[np.arange(ns), pick]
        if len(trace):
            x[trace] = allc[len(allc) - len(trace) :]
            fx[trace] = fall[len(fall) - len(trace) :]
        b = int(np.argmin(fx))
        if fx[b] < best_f:
            best_x, best_f = x[b].copy(), float(fx[b])
        history.append(best_f)
    return OptResult(best_x, best_f, np.asarray(history), n_evals)


def bbo(f: Objective, lower, upper, *, dim: int | None = None, pop_size: int = 30, iters: int = 100,
        elites: int = 2, mutation_prob: float = 0.02, mutation_scale: float = 0.05,
        seed=None) -> OptResult:  # fmt: skip
    """Biogeography-based optimisation (minimisation); see the module docstring."""
    lo, hi, rng = _setup(lower, upper, dim, seed)
    if pop_size < 2 or iters < 0 or not 0 <= elites < pop_size:
        raise ValueError("bbo: pop_size >= 2, iters >= 0 and 0 <= elites < pop_size required")
    d = lo.shape[0]
    sigma = mutation_scale * (hi - lo)
    x = rng.uniform(lo, hi, (pop_size, d))
    fx = _evaluate(f, x)
    n_evals = pop_size
    ranks = np.arange(pop_size)
    mu = (pop_size - ranks) / (pop_size + 1.0)  # emigration, best habitat highest
    lam = 1.0 - mu  # immigration, best habitat lowest
    # roulette on mu exactly and fast: mu_k is proportional to the integer P - k, so a
    # uniform integer in [0, P(P+1)/2) looked up in this table picks habitat k w.p. mu_k/sum(mu)
    table = np.repeat(ranks, pop_size - ranks)
    cols = np.arange(d)
    order = np.argsort(fx, kind="stable")
    x, fx = x[order], fx[order]
    history = [float(fx[0])]
    for _ in range(iters):
        elite_x, elite_f = x[:elites].copy(), fx[:elites].copy()
        immigrate = rng.random((pop_size, d)) < lam[:, None]
        src = table[rng.integers(0, len(table), (pop_size, d))]
        new = np.where(immigrate, x[src, cols[None, :]], x)
        mutate = rng.random((pop_size, d)) < mutation_prob
        new = np.where(mutate, new + rng.standard_normal((pop_size, d)) * sigma, new)
        np.clip(new, lo, hi, out=new)
        fnew = _evaluate(f, new)
        n_evals += pop_size
        if elites:
            worst = np.argsort(fnew, kind="stable")[pop_size - elites :]
            new[worst], fnew[worst] = elite_x, elite_f
        order = np.argsort(fnew, kind="stable")
        x, fx = new[order], fnew[order]
        history.append(min(history[-1], float(fx[0])))
    return OptResult(x[0].copy(), float(fx[0]), np.asarray(history), n_evals)


def jaya(f: Objective, lower, upper, *, dim: int | None = None, pop_size: int = 20, iters: int = 100,
         seed=None) -> OptResult:  # fmt: skip
    """Jaya (minimisation, parameter-free apart from the budget); greedy replacement."""
    lo, hi, rng = _setup(lower, upper, dim, seed)
    if pop_size < 2 or iters < 0:
        raise ValueError("jaya: pop_size >= 2 and iters >= 0 required")
    d = lo.shape[0]
    x = rng.uniform(lo, hi, (pop_size, d))
    fx = _evaluate(f, x)
    n_evals = pop_size
    history = [float(fx.min())]
    for _ in range(iters):
        best, worst = x[np.argmin(fx)], x[np.argmax(fx)]
        r1, r2 = rng.random((pop_size, d)), rng.random((pop_size, d))
        ax = np.abs(x)
        new = np.clip(x + r1 * (best - ax) - r2 * (worst - ax), lo, hi)
        fnew = _evaluate(f, new)
        n_evals += pop_size
        better = fnew < fx
        x[better], fx[better] = new[better], fnew[better]
        history.append(float(fx.min()))
    b = int(np.argmin(fx))
    return OptResult(x[b].copy(), float(fx[b]), np.asarray(history), n_evals)


OPTIMIZERS: dict[str, Callable[..., OptResult]] = {"cso": cso, "bbo": bbo, "jaya": jaya}
