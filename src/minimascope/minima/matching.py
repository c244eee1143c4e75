"""Weight matching (Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR 2023) for torchvision ResNets.

Permuting a layer's hidden channels (its output channels, with its batch norm's scale, shift and running
statistics) and, the same way, the input channels of every layer that reads them leaves the network's
function unchanged. Residual additions tie channels together: a block adds its last conv's output to its
input (or to its downsample's output), so one permutation serves the whole residual stream from one
downsampling block to the next; the stem's output is layer1's stream, and the last stream feeds the head.
ResNet18 thus has 12 permutation groups: 4 streams and the 8 blocks' inner channels.

Weight matching looks for the permutations P_g of network B that maximise sum over layers of
<W_a, P_out W_b P_in^T>: coordinate descent over the groups in a seeded random order, each step a
linear assignment problem (with the other groups fixed) solved exactly by
``scipy.optimize.linear_sum_assignment``, until a whole pass changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models import ResNet

from minimascope.errors import MinimascopeError

Axes = dict[str, tuple[str | None, ...]]  # state key -> permutation group of each axis (None: not permuted)
_BN_ENTRIES = ("weight", "bias", "running_mean", "running_var")


def resnet_permutation_axes(model: nn.Module) -> Axes:
    """The permutation group of each axis of each state entry of a torchvision ResNet (BasicBlock or
    Bottleneck blocks; ``resnet18`` and ``resnet18-cifar`` of ``minimascope.models`` alike)."""
    if not isinstance(model, ResNet):
        raise MinimascopeError(f"weight matching handles torchvision ResNets, not {type(model).__name__}")
    axes: Axes = {}

    def conv_bn(conv: str, bn: str, out_group: str, in_group: str | None) -> None:
        axes[f"{conv}.weight"] = (out_group, in_group)
        for entry in _BN_ENTRIES:
            axes[f"{bn}.{entry}"] = (out_group,)

    stream = "stream:conv1"
    conv_bn("conv1", "bn1", stream, None)
    for stage in range(1, 5):
        for index, block in enumerate(getattr(model, f"layer{stage}")):
            prefix = f"layer{stage}.{index}"
            convs = [name for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
            inner = stream
            for number, conv in enumerate(convs[:-1], start=1):
                conv_bn(f"{prefix}.{conv}", f"{prefix}.bn{number}", f"{prefix}.{conv}", inner)
                inner = f"{prefix}.{conv}"
            if block.downsample is not None:  # a new stream: the shortcut no longer ties it to the input
                conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", f"stream:{prefix}", stream)
                stream = f"stream:{prefix}"
            conv_bn(f"{prefix}.{convs[-1]}", f"{prefix}.bn{len(convs)}", stream, inner)
    axes["fc.weight"] = (None, stream)
    axes["fc.bias"] = (None,)
    uncovered = [k for k in model.state_dict() if k not in axes and not k.endswith("num_batches_tracked")]
    if uncovered:
        raise MinimascopeError(f"weight matching does not know how to permute {uncovered[0]} of this ResNet")
    return axes


def _group_sizes(state: Mapping[str, Tensor], axes: Axes) -> dict[str, int]:
    return {group: state[key].shape[axis] for key, groups in axes.items()
            for axis, group in enumerate(groups) if group is not None}


def permute_state(state: Mapping[str, Tensor], axes: Axes, perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state with channel i of each permuted axis taken from channel ``perms[group][i]``."""
    permuted = {}
    for key, tensor in state.items():
        for axis, group in enumerate(axes.get(key, ())):
            if group is not None:
                tensor = tensor.index_select(axis, perms[group].to(tensor.device))
        permuted[key] = tensor
    return permuted


def match_permutations(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], axes: Axes, *,
                       parameters: set[str], max_iter: int = 100, seed: int = 0) -> dict[str, Tensor]:
    """Per group, the permutation of B's channels that weight matching finds (see module doc); the
    objective sums over the entries named in ``parameters`` (weights and biases, not running statistics)."""
    from scipy.optimize import linear_sum_assignment  # only weight matching needs scipy

    sizes = _group_sizes(state_a, axes)
    members: dict[str, list[tuple[str, int]]] = {group: [] for group in sizes}
    for key, groups in axes.items():
        for axis, group in enumerate(groups):
            if group is not None and key in parameters:
                members[group].append((key, axis))
    # float32 products: the assignment only needs each channel pair's similarity to rank, not to 1e-16
    a = {key: state_a[key].detach().to("cpu", torch.float32) for key in parameters}
    b = {key: state_b[key].detach().to("cpu", torch.float32) for key in parameters}
    neighbours = {group: {g for key, _ in members[group] for g in axes[key] if g is not None} for group in sizes}
    perms = {group: torch.arange(size) for group, size in sizes.items()}
    names = sorted(sizes)
    stale = set(names)  # groups whose problem changed since they were last solved
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        if not stale:
            break
        for group in (names[i] for i in torch.randperm(len(names), generator=generator)):
            if group not in stale:
                continue  # same neighbours' permutations as when last solved: the same answer
            stale.discard(group)
            similarity = _similarity(sizes[group], members[group], a, b, axes, perms)
            _, columns = linear_sum_assignment(similarity.numpy(), maximize=True)
            candidate = torch.as_tensor(columns, dtype=torch.int64)
            rows = torch.arange(sizes[group])
            gain = similarity[rows, candidate].sum() - similarity[rows, perms[group]].sum()
            if gain > 1e-6 * similarity.abs().sum():  # float32 noise and ties must not make the descent cycle
                perms[group] = candidate
                stale |= neighbours[group] - {group}
    return perms


def _similarity(n: int, members: list[tuple[str, int]], a: Mapping[str, Tensor],
                b: Mapping[str, Tensor], axes: Axes, perms: Mapping[str, Tensor]) -> Tensor:
    """[i, j] = sum over the group's entries of <A's channel i, B's channel j>, B permuted on its other axes."""
    similarity = torch.zeros(n, n, dtype=torch.float32)
    for key, axis in members:
        other = b[key]
        for other_axis, other_group in enumerate(axes[key]):
            if other_group is not None and other_axis != axis:
                other = other.index_select(other_axis, perms[other_group])
        similarity.addmm_(a[key].movedim(axis, 0).reshape(n, -1), other.movedim(axis, 0).reshape(n, -1).T)
    return similarity.double()


def _check_same_shapes(model_a: nn.Module, model_b: nn.Module) -> None:
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    if state_a.keys() != state_b.keys() or any(state_a[k].shape != state_b[k].shape for k in state_a):
        raise MinimascopeError("weight matching needs two networks of the same architecture")


def weight_matching(model_a: nn.Module, model_b: nn.Module, *, max_iter: int = 100, seed: int = 0) -> nn.Module:
    """A copy of ``model_b`` with its hidden channels permuted to match ``model_a``'s weights (the same
    function as ``model_b``; see module doc). Neither network is changed."""
    _check_same_shapes(model_a, model_b)
    axes = resnet_permutation_axes(model_b)
    parameters = {name for name, _ in model_b.named_parameters()}
    state_b = model_b.state_dict()
    perms = match_permutations(model_a.state_dict(), state_b, axes, parameters=parameters, max_iter=max_iter,
                               seed=seed)
    return _with_state(model_b, permute_state(state_b, axes, perms))


def permute_channels_randomly(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every permutation group shuffled (seeded): the same function, other weights."""
    axes = resnet_permutation_axes(model)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    sizes = sorted(_group_sizes(state, axes).items())
    perms = {group: torch.randperm(size, generator=generator) for group, size in sizes}
    return _with_state(model, permute_state(state, axes, perms))


def _with_state(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    twin = copy.deepcopy(model)
    twin.load_state_dict(state)
    return twin
