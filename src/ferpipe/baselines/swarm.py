"""Population-based minimisers run on many independent problems at once (one per fold).

Problems are the leading axis: positions are ``(F, P, D)`` float32 tensors and the
objective maps candidates ``(F, P', D) -> (F, P')``, so one iteration is a handful of
batched tensor operations for all folds instead of a Python loop per fold. Each problem
draws its random numbers from its own stream (:class:`Streams`, one numpy generator per
problem, always in the same order), so a problem's result does not depend on which other
problems share its batch: batching is a speed knob, never a results knob.

- :func:`cso`  cat swarm optimisation (Chu, Tsai & Pan 2006). Every iteration a fixed
  ``round(mr * P)`` cats, drawn at random, trace and the others seek (the original draws
  each cat's mode with probability MR; a fixed count keeps every problem's batch the same
  shape). Seeking: SMP copies (with SPC the cat itself is one of them); in each new copy
  every dimension changes with probability CDC to ``x * (1 ± SRD)``; one copy is kept by
  roulette with ``P_i = (FS_max - FS_i) / (FS_max - FS_min)`` (all equal: uniform).
  Tracing: ``v = w v + r c1 (x_best - x)`` with ``r ~ U[0, 1]`` per dimension,
  ``|v| <= vmax * (upper - lower)``, ``x = x + v``. Positions are clipped to the box.
- :func:`bbo`  biogeography-based optimisation (Simon 2008). Habitats sorted by cost; rank
  k (0 = best) emigrates with ``mu_k = (P - k) / (P + 1)`` and immigrates with
  ``lambda_k = 1 - mu_k``. Migration: each SIV of habitat k is, with probability lambda_k,
  replaced by the SIV of a habitat chosen by roulette on mu. Mutation: each SIV with
  probability ``mutation_prob`` gets Gaussian noise of std ``mutation_scale * (upper -
  lower)``. Elitism: the ``elites`` best habitats replace the worst of the new generation.

Both return :class:`BatchResult` (best position, value and best-so-far history per problem).
With ``patience`` > 0 a problem stops once its fit plateaus (:class:`_Stopper`: its best
network's training error has not fallen for ``patience`` iterations); it then leaves the
batch and the others run on without it. The objective must then offer ``train_error`` and
``subset(index) -> objective`` (as :class:`ferpipe.baselines.slfn.FoldBatch` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BatchResult:
    x: np.ndarray  # (F, D) best position of each problem
    f: np.ndarray  # (F,) its objective value
    history: np.ndarray  # (F, iters + 1) best-so-far value after init and each iteration (flat after a stop)
    n_evals: np.ndarray  # (F,) objective evaluations per problem
    iterations: np.ndarray  # (F,) iterations run (< iters where the problem stopped on a plateau)


class Streams:
    """One random stream per problem; draws are stacked into ``(F, ...)`` arrays.

    The per-iteration draws are raw bytes (one call per problem): a uint8 per coin flip and a
    uint16 per uniform number, i.e. probabilities in steps of 1/256 and uniforms in steps of
    1/65536. Random numbers are a large share of the work here, and bytes are ~4-8x cheaper
    to generate than float32 uniforms.
    """

    def __init__(self, seeds: Sequence) -> None:
        self.gens = [s if isinstance(s, np.random.Generator) else np.random.default_rng(s) for s in seeds]

    def uniform(self, *shape: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([g.random(shape, dtype=np.float32) for g in self.gens]))

    def draw(self, *parts: tuple[tuple[int, ...], type]) -> list[np.ndarray]:
        """One ``(F, *shape)`` array of random ``dtype`` (np.uint8 / np.uint16) per part."""
        sizes = [int(np.prod(shape)) * np.dtype(dt).itemsize for shape, dt in parts]
        buf = np.empty((len(self.gens), sum(sizes)), dtype=np.uint8)
        for k, g in enumerate(self.gens):
            buf[k] = np.frombuffer(g.bytes(buf.shape[1]), dtype=np.uint8)
        out, at = [], 0
        for (shape, dt), size in zip(parts, sizes, strict=True):
            out.append(np.ascontiguousarray(buf[:, at : at + size]).view(dt).reshape(len(self.gens), *shape))
            at += size
        return out

    def subset(self, keep: torch.Tensor) -> Streams:
        return Streams([self.gens[i] for i in keep.tolist()])


def _unit(u16: np.ndarray) -> torch.Tensor:
    """uint16 draws -> float32 uniforms on [0, 1)."""
    return torch.from_numpy(u16.astype(np.float32) * np.float32(1 / 65536))


class _Stopper:
    """Which problems are still running; finished ones are written out and leave the batch.

    With ``patience`` > 0 a problem stops when the objective's ``train_error(best (F, D)) ->
    (F,)`` (an SLFN's training error rate) has not fallen for ``patience`` iterations, so a
    network that fits every training row still runs ``patience`` more iterations to widen its
    margins.
    """

    def __init__(self, n: int, iters: int, dim: int, patience: int, f: Objective) -> None:
        if patience and not (hasattr(f, "subset") and hasattr(f, "train_error")):
            raise ValueError("patience > 0 needs an objective with subset(index) and train_error(best)")
        self.patience = patience
        self.ids = torch.arange(n)  # original index of each running problem
        self.x = np.zeros((n, dim), dtype=np.float32)
        self.f = np.zeros(n)
        self.history = np.zeros((n, iters + 1))
        self.error = np.zeros((n, iters + 1)) if patience else None
        self.iterations = np.full(n, iters)
        self.n_evals = np.zeros(n, dtype=np.int64)

    def record(self, it: int, best_f: torch.Tensor, best_x: torch.Tensor, f: Objective) -> None:
        rows = self.ids.numpy()
        self.history[rows, it] = best_f.numpy()
        if self.error is not None:
            self.error[rows, it] = f.train_error(best_x).numpy()

    def done(self, it: int) -> torch.Tensor | None:
        """Mask of the running problems that plateaued at iteration ``it`` (None: keep all)."""
        if self.error is None or it < self.patience:
            return None
        rows = self.ids.numpy()
        stop = self.error[rows, it - self.patience] <= self.error[rows, it]
        return torch.from_numpy(stop) if stop.any() else None

    def finish(self, mask: torch.Tensor, best_x, best_f, it: int, n_evals: int) -> None:
        rows = self.ids[mask].numpy()
        self.x[rows], self.f[rows] = best_x[mask].numpy(), best_f[mask].numpy()
        self.iterations[rows], self.n_evals[rows] = it, n_evals
        self.history[rows, it + 1 :] = self.history[rows, it : it + 1]
        self.ids = self.ids[~mask]

    def result(self) -> BatchResult:
        return BatchResult(self.x, self.f, self.history, self.n_evals, self.iterations)


def _box(lower, upper, n_problems: int, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds as ``(F, 1, D)`` tensors from scalars, ``(D,)`` or ``(F, D)`` arrays."""
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float32))
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float32))
    if lo.ndim == 0 or hi.ndim == 0:
        if dim is None:
            raise ValueError("scalar bounds need dim")
        lo, hi = lo.expand(dim).clone(), hi.expand(dim).clone()
    lo, hi = torch.broadcast_tensors(lo, hi)
    if lo.ndim == 1:
        lo, hi = lo.expand(n_problems, -1), hi.expand(n_problems, -1)
    if lo.ndim != 2 or lo.shape[0] != n_problems:
        raise ValueError(f"bounds must be scalars, (D,) or (F={n_problems}, D), got {tuple(lo.shape)}")
    if bool((hi <= lo).any()):
        raise ValueError("every upper bound must exceed its lower bound")
    return lo[:, None, :].contiguous(), hi[:, None, :].contiguous()


def _evaluate(f: Objective, cand: torch.Tensor) -> torch.Tensor:
    vals = f(cand)
    if tuple(vals.shape) != tuple(cand.shape[:2]):
        raise ValueError(f"objective returned shape {tuple(vals.shape)} for candidates {tuple(cand.shape)}")
    return torch.nan_to_num(vals.to(torch.float32), nan=float("inf"))


def _initial(streams: Streams, lo, hi, pop_size: int) -> torch.Tensor:
    return lo + streams.uniform(pop_size, lo.shape[-1]) * (hi - lo)


def cso(f: Objective, lower, upper, seeds: Sequence, *, dim: int | None = None, pop_size: int = 20,
        iters: int = 100, mr: float = 0.8, smp: int = 5, srd: float = 0.2, cdc: float = 0.2,
        spc: bool = True, c1: float = 1.5, w: float = 0.5, vmax: float = 0.2,
        patience: int = 0) -> BatchResult:  # fmt: skip
    """Cat swarm optimisation (minimisation) of ``len(seeds)`` problems; see the module docstring."""
    if smp < 1 or pop_size < 1 or iters < 0:
        raise ValueError("cso: smp, pop_size >= 1 and iters >= 0 required")
    streams = Streams(seeds)
    n = len(streams.gens)
    lo, hi = _box(lower, upper, n, dim)
    d = lo.shape[-1]
    vlim = vmax * (hi - lo)
    n_trace = int(round(mr * pop_size))
    n_seek = pop_size - n_trace
    n_new = smp - 1 if spc else smp  # seeking copies that need an evaluation
    if n_new == 0:
        n_seek, n_trace = 0, pop_size  # a seeking cat with no new copy stays where it is
    x = _initial(streams, lo, hi, pop_size)
    v = (streams.uniform(pop_size, d) * 2 - 1) * vlim
    fx = _evaluate(f, x)
    best_f, b = fx.min(dim=1)
    best_x = x[torch.arange(n), b]
    stopper = _Stopper(n, iters, d, patience, f)
    stopper.record(0, best_f, best_x, f)
    n_evals = pop_size
    # a seeking copy's factor per dimension from one byte: 1 - SRD / 1 + SRD each with
    # probability CDC / 2 (CDC in steps of 1/256), else 1 (the dimension is not changed)
    cut = int(round(cdc * 256))
    factor_of = np.ones(256, dtype=np.float32)
    factor_of[: cut // 2], factor_of[cut // 2 : cut] = 1.0 - srd, 1.0 + srd
    it = 0
    for it in range(1, iters + 1):
        rows = torch.arange(n)[:, None]
        keys, flips, r16, pick16 = streams.draw(((pop_size,), np.uint16), ((n_seek, n_new, d), np.uint8),
                                                ((n_trace, d), np.uint16), ((n_seek, 1), np.uint16))  # fmt: skip
        order = torch.from_numpy(keys.astype(np.int32)).argsort(dim=1, stable=True)  # a random permutation
        trace, seek = order[:, :n_trace], order[:, n_trace:]
        cands = []
        if n_seek:
            base = x[rows, seek][:, :, None, :]  # (F, S, 1, D)
            copies = torch.clamp(base * torch.from_numpy(factor_of[flips]), lo[:, None], hi[:, None])
            cands.append(copies.reshape(n, n_seek * n_new, d))
        if n_trace:
            xt = x[rows, trace]
            vt = torch.clamp(w * v[rows, trace] + _unit(r16) * c1 * (best_x[:, None, :] - xt), -vlim, vlim)
            v[rows, trace] = vt
            cands.append(torch.clamp(xt + vt, lo, hi))
        allc = torch.cat(cands, dim=1)
        fall = _evaluate(f, allc)
        n_evals += allc.shape[1]
        if n_seek:
            fs = fall[:, : n_seek * n_new].reshape(n, n_seek, n_new)
            cs = copies
            if spc:  # the cat's own position is one of the SMP candidates
                fs = torch.cat([fx[rows, seek][:, :, None], fs], dim=2)
                cs = torch.cat([x[rows, seek][:, :, None, :], copies], dim=2)
            fmax, fmin = fs.amax(dim=2, keepdim=True), fs.amin(dim=2, keepdim=True)
            span = fmax - fmin
            ok = torch.isfinite(span) & (span > 0)
            prob = torch.where(ok, (fmax - fs) / torch.where(ok, span, 1.0), 1.0)
            prob = torch.nan_to_num(prob, nan=0.0, posinf=0.0, neginf=0.0)
            prob = torch.where(prob.sum(dim=2, keepdim=True) > 0, prob, 1.0)
            cum = prob.cumsum(dim=2)
            pick_u = _unit(pick16) * cum[:, :, -1:]
            pick = (cum <= pick_u).sum(dim=2).clamp(max=fs.shape[2] - 1)  # (F, S)
            x[rows, seek] = cs.gather(2, pick[:, :, None, None].expand(n, n_seek, 1, d))[:, :, 0]
            fx[rows, seek] = fs.gather(2, pick[:, :, None])[:, :, 0]
        if n_trace:
            x[rows, trace] = allc[:, n_seek * n_new :]
            fx[rows, trace] = fall[:, n_seek * n_new :]
        cur_f, b = fx.min(dim=1)
        better = cur_f < best_f
        best_x = torch.where(better[:, None], x[torch.arange(n), b], best_x)
        best_f = torch.where(better, cur_f, best_f)
        stopper.record(it, best_f, best_x, f)
        stop = stopper.done(it)
        if stop is not None:
            stopper.finish(stop, best_x, best_f, it, n_evals)
            keep = ~stop
            if not bool(keep.any()):
                return stopper.result()
            idx = keep.nonzero()[:, 0]
            x, v, fx, best_x, best_f, lo, hi, vlim = (t[keep] for t in (x, v, fx, best_x, best_f, lo, hi, vlim))
            streams, f, n = streams.subset(idx), f.subset(idx), len(idx)
    stopper.finish(torch.ones(n, dtype=torch.bool), best_x, best_f, it, n_evals)
    return stopper.result()


def bbo(f: Objective, lower, upper, seeds: Sequence, *, dim: int | None = None, pop_size: int = 30,
        iters: int = 100, elites: int = 2, mutation_prob: float = 0.02, mutation_scale: float = 0.05,
        patience: int = 0) -> BatchResult:  # fmt: skip
    """Biogeography-based optimisation (minimisation) of ``len(seeds)`` problems; see the module docstring."""
    if pop_size < 2 or iters < 0 or not 0 <= elites < pop_size:
        raise ValueError("bbo: pop_size >= 2, iters >= 0 and 0 <= elites < pop_size required")
    streams = Streams(seeds)
    n = len(streams.gens)
    lo, hi = _box(lower, upper, n, dim)
    d = lo.shape[-1]
    sigma = (mutation_scale * (hi - lo))[:, 0]  # (F, D)
    ranks = torch.arange(pop_size, dtype=torch.float32)
    mu = (pop_size - ranks) / (pop_size + 1.0)  # emigration, best habitat highest
    lam = (1.0 - mu)[None, :, None]  # immigration, best habitat lowest
    # roulette on mu with the immigration draw itself: given u < lambda_k, u / lambda_k is
    # uniform on [0, 1); mu_k is proportional to the integer P - k, so a uniform index into
    # this table (habitat k repeated P - k times) picks habitat k with probability mu_k / sum(mu)
    table = torch.repeat_interleave(torch.arange(pop_size), pop_size - torch.arange(pop_size))
    x = _initial(streams, lo, hi, pop_size)
    fx = _evaluate(f, x)
    fx, order = fx.sort(dim=1, stable=True)
    x = x[torch.arange(n)[:, None], order]
    stopper = _Stopper(n, iters, d, patience, f)
    stopper.record(0, fx[:, 0], x[:, 0], f)
    n_evals = pop_size
    n_siv = pop_size * d
    it = 0
    for it in range(1, iters + 1):
        rows = torch.arange(n)[:, None]
        elite_x, elite_f = x[:, :elites].clone(), fx[:, :elites].clone()
        (u16,) = streams.draw(((pop_size, d), np.uint16))
        u = _unit(u16)
        immigrate = u < lam
        pick = (u / lam * len(table)).long().clamp(max=len(table) - 1)
        new = torch.where(immigrate, x.gather(1, table[pick]), x)
        # mutation is rare (2 % of SIVs): draw how many SIVs mutate, which, and their noise
        flat_f, flat_i, noise = [], [], []
        for k, g in enumerate(streams.gens):
            m = int(g.binomial(n_siv, mutation_prob)) if mutation_prob > 0 else 0
            if m:
                flat_f.append(np.full(m, k))
                flat_i.append(g.integers(0, n_siv, m))  # with replacement: a repeat (rare) adds two draws
                noise.append(g.standard_normal(m).astype(np.float32))
        if flat_f:
            fi, ii = torch.from_numpy(np.concatenate(flat_f)), torch.from_numpy(np.concatenate(flat_i))
            z = torch.from_numpy(np.concatenate(noise))
            new = new.reshape(n, n_siv).index_put_((fi, ii), z * sigma[fi, ii % d], accumulate=True)
            new = new.view(n, pop_size, d)
        new = torch.clamp(new, lo, hi)
        fnew = _evaluate(f, new)
        n_evals += pop_size
        if elites:
            worst = fnew.argsort(dim=1, stable=True)[:, pop_size - elites :]
            new[rows, worst] = elite_x
            fnew[rows, worst] = elite_f
        fx, order = fnew.sort(dim=1, stable=True)
        x = new[rows, order]
        stopper.record(it, fx[:, 0], x[:, 0], f)  # elitism: the best never gets worse
        stop = stopper.done(it)
        if stop is not None:
            stopper.finish(stop, x[:, 0], fx[:, 0], it, n_evals)
            keep = ~stop
            if not bool(keep.any()):
                return stopper.result()
            idx = keep.nonzero()[:, 0]
            x, fx, lo, hi, sigma = (t[keep] for t in (x, fx, lo, hi, sigma))
            streams, f, n = streams.subset(idx), f.subset(idx), len(idx)
    stopper.finish(torch.ones(n, dtype=torch.bool), x[:, 0], fx[:, 0], it, n_evals)
    return stopper.result()


OPTIMIZERS: dict[str, Callable[..., BatchResult]] = {"cso": cso, "bbo": bbo}
