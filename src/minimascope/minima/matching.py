"""Weight matching (Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR 2023) for ResNets and plain chains of
layers.

Permuting a layer's hidden channels (its output channels, with its batch norm's scale, shift and running
statistics) and, the same way, the input channels of every layer that reads them leaves the network's
function unchanged. Which axes move together is the network's permutation rule (:func:`permutation_rule`):

* ResNets (torchvision's, any depth, BasicBlock or Bottleneck, ``resnet18-cifar`` too, and timm's built
  alike): residual additions tie channels together: a block adds its last conv's output to its input (or
  to its downsample's output), so one permutation serves the whole residual stream from one downsampling
  block to the next; the stem's output is layer1's stream, and the last stream feeds the head. ResNet18
  thus has 12 permutation groups: 4 streams and the 8 blocks' inner channels.
* plain chains (VGG, or any stack of Conv2d/Linear layers with batch norm, pools, activations, dropout and
  flatten between them, each layer reading the previous one's output): each hidden layer's output channels
  are one group. A Linear reading flattened conv maps has its columns permuted in blocks of a channel's
  map. A chain is recognised from a forward pass of an example input.

Any other network (depthwise or grouped convolutions, concatenations, attention, squeeze-excitation…) has
no rule here: :class:`NoPermutationRule` says why. Given an example input, a rule is also checked to keep
the function: the network with randomly permuted channels must compute what it computed.

Weight matching looks for the permutations P_g of network B that maximise sum over layers of
<W_a, P_out W_b P_in^T>: coordinate descent over the groups in a seeded random order, each step a
linear assignment problem (with the other groups fixed) solved exactly by
``scipy.optimize.linear_sum_assignment``, until a whole pass changes nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from minimascope.errors import MinimascopeError
from minimascope.layers import evaluating

Axes = dict[str, tuple[str | None, ...]]  # state key -> permutation group of each axis (None: not permuted)
Views = dict[str, tuple[int, ...]]  # state key -> the shape its axes refer to, where not its own
_BN_ENTRIES = ("weight", "bias", "running_mean", "running_var")
RULES = "torchvision ResNets (and timm's built alike) and plain chains of Conv2d/Linear layers"
# Modules a plain chain may hold between its Conv2d/Linear layers: each acts on every channel alike.
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
                nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout,
                nn.Dropout2d, nn.AlphaDropout)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class NoPermutationRule(MinimascopeError):
    """A network weight matching has no permutation rule for, with the reason."""


@dataclass(frozen=True)
class PermutationRule:
    """Which permutation group each axis of each state entry belongs to (entries not named stay put)."""

    kind: str  # "ResNet" or "plain chain"
    axes: Axes
    views: Views = field(default_factory=dict)

    def viewed(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The state with each entry in the shape its axes refer to."""
        return {key: tensor.reshape(self.views[key]) if key in self.views else tensor for key, tensor in state.items()}

    def group_sizes(self, state: Mapping[str, Tensor]) -> dict[str, int]:
        return _group_sizes(self.viewed(state), self.axes)

    def permute(self, state: Mapping[str, Tensor], perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The state with channel i of each permuted axis taken from channel ``perms[group][i]``."""
        permuted = permute_state(self.viewed(state), self.axes, perms)
        return {key: tensor.reshape(state[key].shape) for key, tensor in permuted.items()}


def resnet_permutation_axes(model: nn.Module) -> Axes:
    """The permutation group of each axis of each state entry of a ResNet: a stem ``conv1``/``bn1``, stages
    ``layer1`` … ``layer4`` of blocks (``conv1``/``bn1`` … ``convK``/``bnK`` and a ``downsample`` conv and
    batch norm or None) and a head ``fc``, as torchvision builds them (BasicBlock or Bottleneck; ``resnet18``
    and ``resnet18-cifar`` of ``minimascope.models`` alike) and timm's plain ResNets do."""
    name = type(model).__name__
    stages = [getattr(model, f"layer{stage}", None) for stage in range(1, 5)]
    if not all(isinstance(getattr(model, part, None), nn.Module) for part in ("conv1", "bn1", "fc")) \
            or not all(isinstance(stage, nn.Sequential) for stage in stages):
        raise NoPermutationRule(f"{name} is no ResNet (a stem conv1/bn1, stages layer1..layer4 and a head fc)")
    grouped = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups != 1), None)
    if grouped is not None:
        raise NoPermutationRule(f"{name} has a grouped convolution ({grouped}), whose channels mix only within "
                                f"their groups")
    axes: Axes = {}

    def conv_bn(conv: str, bn: str, out_group: str, in_group: str | None) -> None:
        axes[f"{conv}.weight"] = (out_group, in_group)
        for entry in _BN_ENTRIES:
            axes[f"{bn}.{entry}"] = (out_group,)

    stream = "stream:conv1"
    conv_bn("conv1", "bn1", stream, None)
    for stage in range(1, 5):
        for index, block in enumerate(stages[stage - 1]):
            prefix = f"layer{stage}.{index}"
            convs = [name for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
            if len(convs) < 2 or not hasattr(block, "downsample"):
                raise NoPermutationRule(f"{prefix} of {name} is no ResNet block (conv1, conv2[, conv3], downsample)")
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
    state = model.state_dict()
    uncovered = [k for k in state if k not in axes and not k.endswith("num_batches_tracked")]
    if uncovered or any(k not in state for k in axes):
        first = uncovered[0] if uncovered else next(k for k in axes if k not in state)
        raise NoPermutationRule(f"{name} is not a ResNet as torchvision builds it: the rule does not know how to "
                                f"permute {first}")
    return axes


def chain_rule(model: nn.Module, example: Tensor) -> PermutationRule:
    """The rule of a plain chain (see module doc), recognised from a forward pass of ``example`` (eval mode):
    every leaf module must read exactly what the one before it wrote (flattened at most), the first the
    input, and the last must write the output."""
    name = type(model).__name__
    calls = _leaf_calls(model, example)
    weighted = [i for i, (_, module, _, _) in enumerate(calls) if isinstance(module, (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise NoPermutationRule(f"{name} has no Conv2d or Linear layer in its forward pass")
    axes: Axes = {}
    views: Views = {}
    group: str | None = None  # the group of the channels the next layer reads (None: the input's, or the output's)
    block = 1  # values per channel once conv maps are flattened
    previous = calls[0][2]
    seen: set[str] = set()
    for index, (module_name, module, given, output) in enumerate(calls):
        if given.shape != previous.shape:
            if given.ndim != 2 or previous.ndim < 3 or block != 1:
                raise NoPermutationRule(f"{name} reshapes a {tuple(previous.shape)} output into "
                                        f"{tuple(given.shape)} before {module_name}")
            block = math.prod(previous.shape[2:])
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            if module_name in seen:
                raise NoPermutationRule(f"{name} uses {module_name} twice in its forward pass")
            seen.add(module_name)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise NoPermutationRule(f"{name} has a grouped or depthwise convolution ({module_name}), whose "
                                        f"channels mix only within their groups")
            if given.ndim != (4 if isinstance(module, nn.Conv2d) else 2):
                raise NoPermutationRule(f"{module_name} of {name} reads a {tuple(given.shape)} input")
            out_group = None if index == weighted[-1] else module_name
            weight = module.weight
            axes[f"{module_name}.weight"] = (out_group, group) + ((None,) if block > 1 else ())
            if block > 1:  # a Linear reading flattened maps: its columns, channel by channel
                views[f"{module_name}.weight"] = (weight.shape[0], weight.shape[1] // block, block)
            if module.bias is not None:
                axes[f"{module_name}.bias"] = (out_group,)
            group, block = out_group, 1
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            for entry in _BN_ENTRIES:
                key = f"{module_name}.{entry}"
                if getattr(module, entry, None) is not None and group is not None:
                    axes[key] = (group,) + ((None,) if block > 1 else ())
                    if block > 1:
                        views[key] = (getattr(module, entry).shape[0] // block, block)
        elif isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1) and block == 1:
            block = math.prod(given.shape[2:])
        elif not (isinstance(module, _ELEMENTWISE) or isinstance(module, _POOLS) and given.ndim == 4):
            raise NoPermutationRule(f"{name} holds {module_name}, a {type(module).__name__}: a plain chain holds "
                                    f"Conv2d, Linear, batch norm, pools, activations, dropout and flatten")
        previous = output
    used = {module_name for module_name, *_ in calls}
    unused = [k for k in model.state_dict() if k.rpartition(".")[0] not in used]
    if unused:
        raise NoPermutationRule(f"{name} holds {unused[0]}, which its forward pass does not use as a chain does")
    return PermutationRule("plain chain", axes, views)


def _leaf_calls(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Module, Tensor, Tensor]]:
    """(name, module, input, output) of each call of a leaf module in a forward pass of ``example`` (eval
    mode), each tensor copied when seen (an in-place activation overwrites its input); NoPermutationRule
    unless each reads what the one before wrote (the first: the input) and the last writes the output."""
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []
    pending: list[Tensor] = []

    def before(module: nn.Module, inputs: tuple) -> None:
        pending.append(inputs[0].detach().clone() if len(inputs) == 1 and torch.is_tensor(inputs[0])
                       else torch.empty(0))

    def after_for(module_name: str):
        def after(module: nn.Module, inputs: tuple, output: object) -> None:
            written = output.detach().clone() if torch.is_tensor(output) else torch.empty(0)
            calls.append((module_name, module, pending.pop(), written))
        return after

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    handles = [h for n, m in leaves for h in (m.register_forward_pre_hook(before),
                                              m.register_forward_hook(after_for(n)))]
    parameter = next(model.parameters(), None)
    example = example.to(parameter.device, parameter.dtype) if parameter is not None else example
    try:
        with evaluating(model), torch.no_grad():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
    reads = [given for _, _, given, _ in calls] + [output]
    writes = [example] + [written for *_, written in calls]
    for label, given, written in zip([n for n, *_ in calls] + ["its output"], reads, writes):
        if not (torch.is_tensor(given) and given.numel() == written.numel()
                and torch.equal(given.flatten(), written.flatten())):
            raise NoPermutationRule(f"{type(model).__name__} is no plain chain: {label} is not what the layer before "
                                    f"wrote (a residual addition, a concatenation or another operation between layers)")
    return calls


def permutation_rule(model: nn.Module, example: Tensor | None = None) -> PermutationRule:
    """The network's permutation rule: a ResNet's, or, given an ``example`` input (a batch of one or more
    images as the network reads them), a plain chain's; with ``example`` the rule is also checked to keep
    the network's function. NoPermutationRule (one line, why) for any other network."""
    name = type(model).__name__
    try:
        rule = PermutationRule("ResNet", resnet_permutation_axes(model))
    except NoPermutationRule as not_resnet:
        if example is None:
            raise NoPermutationRule(f"weight matching has no permutation rule for {name}: it permutes {RULES}; "
                                    f"{not_resnet}, and a plain chain is recognised from an example input, which "
                                    f"was not given") from None
        try:
            rule = chain_rule(model, example)
        except NoPermutationRule as not_chain:
            raise NoPermutationRule(f"weight matching has no permutation rule for {name}: it permutes {RULES}; "
                                    f"{not_resnet}; {not_chain}") from None
    if example is not None:
        _check_function_kept(model, rule, example)
    return rule


def _check_function_kept(model: nn.Module, rule: PermutationRule, example: Tensor) -> None:
    """NoPermutationRule unless ``model`` with randomly permuted channels computes what it computed (eval
    mode): a rule that does not fit the network's wiring changes its function."""
    twin = _shuffled(model, rule, seed=0)
    parameter = next(model.parameters())
    example = example.to(parameter.device, parameter.dtype)
    with evaluating(model), evaluating(twin), torch.no_grad():
        expected, permuted = model(example), twin(example)
    if not torch.allclose(permuted, expected, rtol=1e-3, atol=1e-4 * (1 + float(expected.abs().max()))):
        raise NoPermutationRule(f"weight matching has no permutation rule for {type(model).__name__}: its "
                                f"{rule.kind} rule changes what the network computes (an unusual wiring)")


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


def weight_matching(model_a: nn.Module, model_b: nn.Module, *, example: Tensor | None = None, max_iter: int = 100,
                    seed: int = 0) -> nn.Module:
    """A copy of ``model_b`` with its hidden channels permuted to match ``model_a``'s weights (the same
    function as ``model_b``; see module doc). ``example``: input images as the networks read them, which a
    plain chain is recognised by and any rule is checked on (:func:`permutation_rule`). Neither network is
    changed; NoPermutationRule for a network without a rule."""
    _check_same_shapes(model_a, model_b)
    rule = permutation_rule(model_b, example)
    parameters = {name for name, _ in model_b.named_parameters()}
    state_b = model_b.state_dict()
    perms = match_permutations(rule.viewed(model_a.state_dict()), rule.viewed(state_b), rule.axes,
                               parameters=parameters, max_iter=max_iter, seed=seed)
    return _with_state(model_b, rule.permute(state_b, perms))


def _shuffled(model: nn.Module, rule: PermutationRule, seed: int) -> nn.Module:
    """A copy of ``model`` with every permutation group of ``rule`` shuffled (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    sizes = sorted(rule.group_sizes(state).items())
    perms = {group: torch.randperm(size, generator=generator) for group, size in sizes}
    return _with_state(model, rule.permute(state, perms))


def permute_channels_randomly(model: nn.Module, seed: int, example: Tensor | None = None) -> nn.Module:
    """A copy of ``model`` with every permutation group shuffled (seeded): the same function, other weights
    (``example``: see :func:`permutation_rule`)."""
    return _shuffled(model, permutation_rule(model, example), seed)


def _with_state(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    twin = copy.deepcopy(model)
    twin.load_state_dict(state)
    return twin
