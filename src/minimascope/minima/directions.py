"""The axes of a loss surface: filter-normalised random directions, the plane through three networks, and the
top two principal directions of a training trajectory.

A direction is a mapping of state-dict keys to tensors shaped like those entries; a point of a surface is the
state ``origin + x · d1 + y · d2`` over the floating-point entries (integer buffers, batch norm's counters,
stay the origin's). What each kind of axis moves:

* :func:`filter_normalized_direction` (Li et al. 2018): a Gaussian draw for every weight of two or more
  dimensions (conv and linear weights), each filter (a slice along the first dimension) rescaled to the norm
  of that filter in the weights; biases, batch-norm parameters and buffers are left out (zero). A filter
  scaled by c > 0 in the weights is scaled by c in the direction too, so a point of the surface of a network
  whose conv feeds batch norm is the same function whatever that scale: the surface sees through rescaling.
* :func:`plane_axes` (Garipov et al. 2018): origin A, orthonormal axes from B − A and C − A by Gram–Schmidt on
  the flattened parameters. Buffers (batch norm's running statistics) follow the same combination of the
  three networks, so each network's own point is exactly that network, running statistics included.
* :func:`trajectory_axes` (Li et al. 2018, Fig. 9): the top two principal directions of the centred matrix of
  θ_t − θ_final over a run's saved weights, parameters only; buffers stay the final network's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minimascope.errors import MinimascopeError

Direction = dict[str, Tensor]


def floating_entries(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The floating-point entries of a state dict (what a point of a surface moves), as float64 copies."""
    return {key: value.detach().to(torch.float64, copy=True) for key, value in state.items()
            if value.is_floating_point()}


def parameter_names(model: nn.Module) -> list[str]:
    """The state-dict keys of the model's trainable parameters (its buffers are the other floating entries)."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def filter_normalized_direction(state: Mapping[str, Tensor], parameters: Sequence[str],
                                generator: torch.Generator) -> Direction:
    """A random direction in which every filter of every weight of ≥ 2 dimensions has the norm of that filter
    in ``state``; other entries (biases, batch-norm parameters, buffers) are zero. Drawn in ``parameters``'
    order from ``generator``, so a seed gives the same direction for any network of the same shapes."""
    direction, moving = {}, set(parameters)
    for key, value in floating_entries(state).items():
        if key in moving and value.ndim >= 2:
            draw = torch.randn(value.shape, generator=generator, dtype=torch.float64)
            filters, weights = draw.flatten(1), value.flatten(1)
            scale = weights.norm(dim=1) / filters.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
            direction[key] = (filters * scale.unsqueeze(1)).view_as(value)
        else:
            direction[key] = torch.zeros_like(value)
    return direction


def random_directions(state: Mapping[str, Tensor], parameters: Sequence[str], seed: int,
                      count: int) -> list[Direction]:
    """``count`` filter-normalised directions drawn one after the other from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [filter_normalized_direction(state, parameters, generator) for _ in range(count)]


def _flat(direction: Mapping[str, Tensor], keys: Sequence[str]) -> Tensor:
    return torch.cat([direction[key].reshape(-1) for key in keys])


def _combine(terms: Sequence[tuple[float, Mapping[str, Tensor]]]) -> Direction:
    keys = terms[0][1].keys()
    return {key: sum(weight * entries[key] for weight, entries in terms) for key in keys}


def _difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Direction:
    return {key: a[key] - b[key] for key in b}


@dataclass(frozen=True)
class Plane:
    """Orthonormal axes (over the parameters) of the plane through three networks; ``points`` are A, B and C's
    coordinates on it (A at the origin, B on the x axis)."""

    axes: tuple[Direction, Direction]
    points: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


def plane_axes(a: Mapping[str, Tensor], b: Mapping[str, Tensor], c: Mapping[str, Tensor],
               parameters: Sequence[str]) -> Plane:
    """Gram–Schmidt on B − A and C − A over the flattened ``parameters``; the same combinations of the full
    floating-point states extend the axes to the buffers (see module doc)."""
    a, b, c = floating_entries(a), floating_entries(b), floating_entries(c)
    to_b, to_c = _difference(b, a), _difference(c, a)
    norm_b = _flat(to_b, parameters).norm().item()
    if norm_b == 0:
        raise MinimascopeError("networks A and B have the same weights: they span no plane")
    u = _combine([(1 / norm_b, to_b)])
    along = torch.dot(_flat(to_c, parameters), _flat(u, parameters)).item()
    rest = _combine([(1.0, to_c), (-along, u)])
    height = _flat(rest, parameters).norm().item()
    if height <= 1e-9 * max(norm_b, 1.0):
        raise MinimascopeError("networks A, B and C lie on one line: they span no plane")
    v = _combine([(1 / height, rest)])
    return Plane((u, v), ((0.0, 0.0), (norm_b, 0.0), (along, height)))


@dataclass(frozen=True)
class Trajectory:
    """The top two principal directions of θ_t − θ_final (parameters only, unit norm), the share of the
    variance of the centred matrix each explains, and each saved network's coordinates on them."""

    axes: tuple[Direction, Direction]
    explained: tuple[float, float]
    points: list[tuple[float, float]]


def trajectory_axes(states: Sequence[Mapping[str, Tensor]], final: Mapping[str, Tensor],
                    parameters: Sequence[str]) -> Trajectory:
    """PCA (centred, as Li et al.) of the rows θ_t − θ_final over ``parameters``; each state projected on the two
    directions (without centring: the final network is the origin)."""
    final = floating_entries(final)
    rows = torch.stack([_flat(_difference(floating_entries(s), final), parameters) for s in states])
    centred = rows - rows.mean(dim=0)
    # Few rows of millions of entries: the principal directions from the eigenvectors of the small Gram matrix.
    variance, vectors = torch.linalg.eigh(centred @ centred.T)
    variance, vectors = variance.flip(0).clamp_min(0), vectors.flip(1)
    if len(states) < 3 or variance[1] <= 1e-12 * variance[0]:
        raise MinimascopeError(f"a trajectory needs saved weights spanning two directions; these {len(states)} "
                               f"do not (train with snapshot_every so that the run keeps more epochs)")
    explained = (variance[:2] / variance.sum()).tolist()
    right = [centred.T @ vectors[:, i] / variance[i].sqrt() for i in range(2)]
    sizes = [final[key].numel() for key in parameters]
    axes = []
    for row in right[:2]:
        pieces = dict(zip(parameters, row.split(sizes)))
        axes.append({key: pieces[key].view_as(value) if key in pieces else torch.zeros_like(value)
                     for key, value in final.items()})
    points = [(float(row @ right[0]), float(row @ right[1])) for row in rows]
    return Trajectory((axes[0], axes[1]), (explained[0], explained[1]), points)
