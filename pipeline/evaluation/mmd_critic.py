"""Prototypes and criticisms by MMD-critic (Kim, Khanna & Koyejo, NeurIPS 2016), on feature vectors.

Prototypes are points of the data that, taken together, look like the data; criticisms are points
the prototypes represent badly. Both are measured with the maximum mean discrepancy (MMD) under an
RBF kernel ``k(x, y) = exp(-|x - y|^2 / (2 sigma^2))``.

Prototypes. For data ``X = {x_1..x_n}`` and a chosen subset ``S`` (``m = |S|``),

    MMD^2(X, X_S) = 1/n^2 sum_{i,j} k(x_i, x_j) - 2/(n m) sum_{i in [n], j in S} k(x_i, x_j) + 1/m^2 sum_{i,j in S} k(x_i, x_j)

and prototype selection *minimises* it, i.e. maximises the paper's objective

    J_b(S) = 2/(n m) sum_{i in [n], j in S} k(x_i, x_j) - 1/m^2 sum_{i,j in S} k(x_i, x_j)  =  1/n^2 sum_{i,j} k - MMD^2,

greedily: each step adds the candidate ``c`` with the largest ``J_b(S + {c})``, all candidates scored at
once from running sums (the published code ranks candidates by ``m J_b(S + {c})`` less terms shared by all).

Criticisms. The witness function ``w(x) = 1/n sum_i k(x, x_i) - 1/m sum_{p in S} k(x, p)`` is
positive where the data are denser than the prototypes, negative where the prototypes
over-represent the data, and near 0 far from all of them (both means vanish). Criticisms are
non-prototype points chosen greedily to maximise ``L(C) = sum_{c in C} |w(c)| + log det K_{C,C}`` (the
paper's objective with its log-determinant regulariser, which keeps the criticisms apart), or ``|w|``
alone without the regulariser. The log-determinant gain of a candidate is the log of its residual
variance given the chosen criticisms (a Schur complement), updated by one Cholesky step per pick.
With few prototypes the largest ``|w|`` often lies right beside a prototype (each adds a kernel bump of
weight 1/m): without the regulariser the criticisms then pile up there; with it, each such pick blocks
its own neighbourhood, which leaves room for the points the prototypes miss.

Cost: the class's kernel matrix is held in memory (n^2 float64), so ``n`` is a sample of a class
(a few thousand points); each greedy step is O(n) (prototypes) or O(n * picks) (criticisms).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPE = torch.float64  # the greedy steps compare sums of many kernel values: float64 keeps ties honest


@dataclass(frozen=True)
class CriticOptions:
    """``bandwidth``: the RBF's sigma; None = the median heuristic, per class. ``regularize``: the
    log-determinant diversity term of the criticisms."""

    bandwidth: float | None = None
    regularize: bool = True


@dataclass
class ClassSelection:
    """Prototypes and criticisms of one class; indices point into the rows given to :func:`select_per_class`."""

    label: int
    prototypes: torch.Tensor           # int64 [m], in the order they were picked
    criticisms: torch.Tensor           # int64 [c], in the order they were picked
    prototype_witness: torch.Tensor    # float64 [m]: w at each prototype
    criticism_witness: torch.Tensor    # float64 [c]: w at each criticism (signed)
    bandwidth: float
    mmd2: float                        # MMD^2 between the class's points and its prototypes


def median_bandwidth(x: torch.Tensor) -> float:
    """Median Euclidean distance between distinct rows of ``x`` [n, d] (the lower median for an even count).

    When most rows coincide the median is 0; then the median of the positive distances is used, and 1.0
    when every row is the same (any bandwidth gives the same all-ones kernel)."""
    if len(x) < 2:
        return 1.0
    distances = torch.pdist(x.to(DTYPE))
    median = distances.median()
    if median <= 0:
        positive = distances[distances > 0]
        median = positive.median() if len(positive) else torch.tensor(1.0)
    return float(median)


def rbf_kernel(x: torch.Tensor, y: torch.Tensor | None = None, bandwidth: float | None = None) -> torch.Tensor:
    """``exp(-|x_i - y_j|^2 / (2 sigma^2))`` [len(x), len(y)] in float64; ``y`` defaults to ``x``, sigma to the
    median heuristic on ``x``."""
    sigma = median_bandwidth(x) if bandwidth is None else float(bandwidth)
    if sigma <= 0:
        raise ValueError(f"the RBF bandwidth must be positive, got {sigma}")
    x = x.to(DTYPE)
    y = x if y is None else y.to(DTYPE)
    squared = torch.cdist(x, y).square()
    return torch.exp(-squared / (2.0 * sigma * sigma))


def mmd2(kernel: torch.Tensor, subset: torch.Tensor) -> float:
    """MMD^2 between all points and the points ``subset`` (indices), from their kernel matrix [n, n]."""
    subset = torch.as_tensor(subset, device=kernel.device, dtype=torch.long)
    n, m = len(kernel), len(subset)
    return float(kernel.sum() / n**2 - 2.0 * kernel[:, subset].sum() / (n * m) + kernel[subset][:, subset].sum() / m**2)


def select_prototypes(kernel: torch.Tensor, m: int) -> torch.Tensor:
    """Greedy maximiser of J_b(S) (minimiser of MMD^2 to the data) over ``m`` points; int64 indices in pick order."""
    n = len(kernel)
    m = min(int(m), n)
    column_sum = kernel.sum(0)                           # sum_i k(x_i, x_c) for every candidate c
    diagonal = kernel.diagonal()
    to_chosen = torch.zeros(n, dtype=kernel.dtype, device=kernel.device)  # sum_{j in S} k(x_c, x_j)
    chosen_column_sum = torch.zeros((), dtype=kernel.dtype, device=kernel.device)  # sum_{i in [n], j in S} k(x_i, x_j)
    chosen_block_sum = torch.zeros((), dtype=kernel.dtype, device=kernel.device)   # sum_{i, j in S} k(x_i, x_j)
    available = torch.ones(n, dtype=torch.bool, device=kernel.device)
    picks = []
    for step in range(m):
        size = step + 1
        gain = (2.0 / (n * size)) * (chosen_column_sum + column_sum) - (chosen_block_sum + 2.0 * to_chosen + diagonal) / size**2
        gain = gain.masked_fill(~available, -torch.inf)
        c = int(torch.argmax(gain))
        picks.append(c)
        chosen_column_sum = chosen_column_sum + column_sum[c]
        chosen_block_sum = chosen_block_sum + 2.0 * to_chosen[c] + diagonal[c]
        to_chosen = to_chosen + kernel[:, c]
        available[c] = False
    return torch.tensor(picks, dtype=torch.long, device=kernel.device)


def witness(kernel: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``w(q) = mean_i k(q, x_i) - mean_{p in prototypes} k(q, p)`` for every query row of ``kernel`` [q, n]
    (the kernel between queries and the data; ``prototypes`` index the data columns)."""
    prototypes = torch.as_tensor(prototypes, device=kernel.device, dtype=torch.long)
    return kernel.mean(1) - kernel[:, prototypes].mean(1)


def select_criticisms(kernel: torch.Tensor, prototypes: torch.Tensor, c: int, regularize: bool = True,
                      eps: float = 1e-12) -> torch.Tensor:
    """Greedy criticisms: non-prototypes maximising ``sum |w| (+ log det K_CC)``; int64 indices in pick order."""
    n = len(kernel)
    score = witness(kernel, prototypes).abs()
    available = torch.ones(n, dtype=torch.bool, device=kernel.device)
    available[torch.as_tensor(prototypes, device=kernel.device, dtype=torch.long)] = False
    c = min(int(c), int(available.sum()))
    residual = kernel.diagonal().clone()                 # k(x,x) - k_C(x)^T K_CC^-1 k_C(x): log det gain = log of it
    factors = torch.zeros(c, n, dtype=kernel.dtype, device=kernel.device)  # rows of the incremental Cholesky factor
    picks = []
    for step in range(c):
        objective = (score + residual.clamp_min(eps).log()) if regularize else score
        objective = objective.masked_fill(~available, -torch.inf)
        j = int(torch.argmax(objective))
        picks.append(j)
        available[j] = False
        if regularize:
            row = (kernel[j] - factors[:step].T @ factors[:step, j]) / residual[j].clamp_min(eps).sqrt()
            factors[step] = row
            residual = residual - row.square()
    return torch.tensor(picks, dtype=torch.long, device=kernel.device)


def mmd_critic(features: torch.Tensor, n_prototypes: int, n_criticisms: int,
               options: CriticOptions = CriticOptions()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """(prototypes, criticisms, witness of every point, bandwidth, MMD^2 of the prototypes) of one set [n, d]."""
    if n_prototypes < 1 or len(features) < 1:
        raise ValueError(f"MMD-critic needs at least one point and one prototype (got {len(features)} points, "
                         f"n_prototypes = {n_prototypes})")
    sigma = median_bandwidth(features) if options.bandwidth is None else float(options.bandwidth)
    kernel = rbf_kernel(features, bandwidth=sigma)
    prototypes = select_prototypes(kernel, n_prototypes)
    criticisms = select_criticisms(kernel, prototypes, n_criticisms, options.regularize)
    return prototypes, criticisms, witness(kernel, prototypes), sigma, mmd2(kernel, prototypes)


def select_per_class(features: torch.Tensor, labels: torch.Tensor, n_prototypes: int, n_criticisms: int,
                     options: CriticOptions = CriticOptions()) -> dict[int, ClassSelection]:
    """MMD-critic within each class of ``labels`` [N] on ``features`` [N, D]; {label: selection}, indices into the N rows."""
    out = {}
    for label in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == label).squeeze(1)
        prototypes, criticisms, w, sigma, discrepancy = mmd_critic(features[rows], n_prototypes, n_criticisms, options)
        out[int(label)] = ClassSelection(int(label), rows[prototypes], rows[criticisms], w[prototypes], w[criticisms],
                                         sigma, discrepancy)
    return out


def sample_per_class(labels: torch.Tensor, n_per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of a seeded random sample of up to ``n_per_class`` rows of every class (all rows of a
    smaller class); the draw is one permutation on the generator's device, the same for a CPU and a GPU run."""
    labels = labels.to(generator.device)
    order = torch.randperm(len(labels), generator=generator, device=generator.device)
    shuffled = labels[order]
    by_class = torch.argsort(shuffled, stable=True)      # rows grouped by class, random order within a class
    grouped = shuffled[by_class]
    first = torch.searchsorted(grouped, grouped, side="left")  # start of each row's class in the grouped order
    rank = torch.arange(len(grouped), device=grouped.device) - first
    return torch.sort(order[by_class[rank < n_per_class]]).values
