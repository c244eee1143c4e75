"""Value-level tests of minimascope.optim: Hutchinson helpers, AdaHessian updates and state, the registry
(every torch.optim optimizer step for step against torch's own class), SAM and ASAM against their closed
forms, Muon's split."""

from __future__ import annotations

import contextlib
import gc
import math
import warnings
import weakref

import pytest
import torch
from torch import nn

from helpers import conv_bn_net
from minimascope import optim
from minimascope.curvature import block_statistic, hessian_vector_product, hutchinson_diagonal, rademacher_like
from minimascope.fast_layers import fast_forward
from minimascope.optim import needs_create_graph
from minimascope.optim.adahessian import AdaHessian

BETAS = (0.9, 0.999)


# ----------------------------------------------------------------------------- helpers


def quadratic_params(seed: int = 0) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
    """A conv-kernel-shaped and a vector parameter, with curvatures a of both signs."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, 3, 2, 2), (5,)]
    params = [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    curvatures = [torch.rand(s, generator=gen, dtype=torch.float64) * 4 - 2 for s in shapes]
    return params, curvatures


def quadratic_loss(params: list[torch.Tensor], curvatures: list[torch.Tensor]) -> torch.Tensor:
    """f = 1/2 sum a_i x_i^2: gradient a*x, Hessian diag(a), so z*(Hz) = a for every probe z."""
    return sum(0.5 * (a * p * p).sum() for p, a in zip(params, curvatures))


def window_stat_by_hand(a: torch.Tensor, stat: str) -> torch.Tensor:
    """The block statistic written out per kernel window (independent of block_statistic)."""
    if a.ndim < 3:
        return a.abs()
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    per_window = flat.abs().mean(-1) if stat == "abs_mean" else flat.mean(-1).abs()
    return per_window.reshape(a.shape[0], a.shape[1], *([1] * (a.ndim - 2)))


def reference_run(
    x0: torch.Tensor,
    a: torch.Tensor,
    *,
    steps: int,
    hessian_steps: set[int],
    lr: float,
    eps: float,
    wd: float,
    k: float,
    coupled: bool,
    stat: str,
) -> torch.Tensor:
    """The AdaHessian update written out for f = 1/2 sum a x^2, where D = a exactly."""
    beta1, beta2 = BETAS
    x, m, v, h = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0), 0
    for t in range(1, steps + 1):
        g = a * x + (wd * x if coupled else 0.0)
        if t in hessian_steps:
            ds = window_stat_by_hand(a, stat)
            v = beta2 * v + (1 - beta2) * ds**2
            h += 1
        m = beta1 * m + (1 - beta1) * g
        update = (m / (1 - beta1**t)) / ((v / (1 - beta2**h)) ** (k / 2) + eps)
        x = x - lr * update - (0.0 if coupled else lr * wd * x)
    return x


class TinyConvNet(nn.Module):
    """Conv2d -> Tanh -> Linear on 8x8 single-channel images (Tanh: a nonzero, dense Hessian)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def tiny_problem(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = TinyConvNet().to(dtype)
    images = torch.randn(4, 1, 8, 8, dtype=dtype)
    labels = torch.tensor([0, 1, 2, 1])
    return model, images, labels


def train(model: nn.Module, opt: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for images, labels in batches:
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward(create_graph=needs_create_graph(opt))
        opt.step()
        opt.zero_grad()


def make_batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen)) for _ in range(n)]


# Tiny tensors: on shared cores a second OpenMP thread makes each op much slower.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _quiet_create_graph_warning():
    # torch warns about backward(create_graph=True) on every use; AdaHessian breaks that cycle itself.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_graph=True.*", category=UserWarning)
        yield


# ----------------------------------------------------------------------------- probes


def test_rademacher_values_balance_and_reproducibility() -> None:
    template = torch.empty(100_003, dtype=torch.float64)
    z = rademacher_like(template, torch.Generator().manual_seed(3))
    assert z.shape == template.shape and z.dtype == torch.float64
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    # mean of n fair signs has std 1/sqrt(n); also per bit position, which a bad bit table would skew
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())
    for offset in range(8):
        lane = z[offset::8]
        assert abs(lane.mean().item()) < 5 / math.sqrt(lane.numel())
    # independent neighbours (entries sharing a random byte included): E[z_i z_j] = 0
    for lag in (1, 7):
        products = z[:-lag] * z[lag:]
        assert abs(products.mean().item()) < 5 / math.sqrt(products.numel())
    assert torch.equal(z, rademacher_like(template, torch.Generator().manual_seed(3)))
    gen = torch.Generator().manual_seed(3)
    first, second = rademacher_like(template, gen), rademacher_like(template, gen)
    assert not torch.equal(first, second)
    assert rademacher_like(torch.empty(3, 5), gen).shape == (3, 5)
    assert rademacher_like(torch.empty(()), gen).abs().item() == 1.0


def test_probes_change_across_steps_and_seeds_reproduce() -> None:
    def run(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model, images, labels = tiny_problem()
        opt = AdaHessian(model.parameters(), lr=0.01, seed=seed)
        states = []
        for _ in range(2):
            states.append(opt.generator.get_state().clone())
            nn.functional.cross_entropy(model(images), labels).backward(create_graph=True)
            opt.step()
            opt.zero_grad()
        return states, [p.detach().clone() for p in model.parameters()]

    states, params = run(seed=7)
    assert not torch.equal(states[0], states[1])  # fresh probes every Hessian step
    states_again, params_again = run(seed=7)
    assert all(torch.equal(s, t) for s, t in zip(states, states_again))
    assert all(torch.equal(p, q) for p, q in zip(params, params_again))
    _, params_other = run(seed=8)
    assert not all(torch.equal(p, q) for p, q in zip(params, params_other))


# ----------------------------------------------------------------------------- Hessian helpers


def test_hessian_vector_product_matches_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    a = m @ m.T
    x = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    unused = torch.randn(2, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * x @ a @ x + unused.sum()  # `unused` has a zero Hessian block
    grads = torch.autograd.grad(loss, [x, unused], create_graph=True)
    vec = [torch.randn(4, generator=gen, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    hx, hu = hessian_vector_product([grads[0]], [x, unused], [vec[0]])
    torch.testing.assert_close(hx, a @ vec[0], rtol=1e-13, atol=1e-13)
    assert torch.equal(hu, torch.zeros(2, dtype=torch.float64))


def test_hutchinson_is_exact_on_separable_quadratic_for_every_probe() -> None:
    params, curvatures = quadratic_params()
    grads = torch.autograd.grad(quadratic_loss(params, curvatures), params, create_graph=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        estimate = hutchinson_diagonal(grads, params, generator=gen, retain_graph=True)
        for d, a in zip(estimate, curvatures):
            assert torch.equal(d, a)  # z*(a*z) = a: z^2 = 1 exactly


def test_hutchinson_average_approaches_exact_conv_net_diagonal() -> None:
    model, images, labels = tiny_problem()
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    sizes = [p.numel() for p in params]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = dict(zip(names, (c.view_as(p) for c, p in zip(flat.split(sizes), params))))
        return nn.functional.cross_entropy(torch.func.functional_call(model, chunks, (images,)), labels)

    flat = torch.cat([p.detach().flatten() for p in params])
    hessian = torch.autograd.functional.hessian(loss_of, flat)
    exact = hessian.diagonal()

    n_probes = 1000
    loss = nn.functional.cross_entropy(model(images), labels)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    estimate = hutchinson_diagonal(grads, params, n_samples=n_probes, generator=torch.Generator().manual_seed(0))
    estimate = torch.cat([e.flatten() for e in estimate])
    # One probe gives D_i = H_ii + sum_{j!=i} H_ij z_i z_j, of variance sum_{j!=i} H_ij^2; the mean of N
    # probes is within 5 standard errors of H_ii (a 5-sigma event has odds ~6e-7 per entry).
    off_diagonal_var = (hessian**2).sum(1) - exact**2
    tolerance = 5 * (off_diagonal_var / n_probes).sqrt() + 1e-12
    assert exact.abs().max() > 1e-3  # the test has a nontrivial diagonal to find
    assert ((estimate - exact).abs() <= tolerance).all()


def test_hutchinson_samples_are_averaged() -> None:
    model, images, labels = tiny_problem()
    params = list(model.parameters())
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(images), labels), params, create_graph=True)
    gen = torch.Generator().manual_seed(5)
    singles = [hutchinson_diagonal(grads, params, generator=gen, retain_graph=True) for _ in range(3)]
    averaged = hutchinson_diagonal(grads, params, n_samples=3, generator=torch.Generator().manual_seed(5))
    for i, avg in enumerate(averaged):
        torch.testing.assert_close(avg, sum(s[i] for s in singles) / 3, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- block statistic

CONV2D = torch.tensor([[[[1.0, -3.0], [2.0, -4.0]]], [[[0.5, 0.5], [-0.5, 2.5]]]])  # (2, 1, 2, 2)


@pytest.mark.parametrize(
    ("diagonal", "abs_mean", "signed_mean"),
    [
        # Conv1d (out=1, in=2, k=3)
        (torch.tensor([[[1.0, -2.0, 4.0], [-3.0, -3.0, 0.0]]]), [[[7 / 3], [2.0]]], [[[1.0], [2.0]]]),
        # Conv2d (2, 1, 2, 2)
        (CONV2D, [[[[2.5]]], [[[1.0]]]], [[[[1.0]]], [[[0.75]]]]),
        # Conv3d (1, 1, 2, 2, 2)
        (torch.tensor([1.0, -1, 2, -2, 3, -3, 4, 8]).view(1, 1, 2, 2, 2), [[[[[3.0]]]]], [[[[[1.5]]]]]),
        # 1-D and 2-D tensors: no window, |D|
        (torch.tensor([-1.0, 2.0]), [1.0, 2.0], [1.0, 2.0]),
        (torch.tensor([[-1.0, 2.0], [3.0, -4.0]]), [[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]),
    ],
)
def test_block_statistic_matches_hand_values(diagonal: torch.Tensor, abs_mean: list, signed_mean: list) -> None:
    torch.testing.assert_close(block_statistic(diagonal, "abs_mean"), torch.tensor(abs_mean))
    torch.testing.assert_close(block_statistic(diagonal, "signed_mean"), torch.tensor(signed_mean))


# ----------------------------------------------------------------------------- AdaHessian updates


def test_one_step_by_hand() -> None:
    x = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = AdaHessian([x], lr=0.1, eps=1e-4, weight_decay=0.01)
    (0.5 * 3.0 * x * x).sum().backward(create_graph=True)
    opt.step()
    # g = 6, D = 3; m_hat = 6, v_hat = 9; x <- 2 - 0.1 * 6 / (3 + 1e-4) - 0.1 * 0.01 * 2
    assert x.item() == pytest.approx(2 - 0.1 * 6 / 3.0001 - 0.001 * 2, rel=1e-14)


@pytest.mark.parametrize("stat", ["abs_mean", "signed_mean"])
@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("k", [1.0, 0.5])
def test_steps_match_reference(stat: str, coupled: bool, k: float) -> None:
    params, curvatures = quadratic_params()
    starts = [p.detach().clone() for p in params]
    settings = dict(lr=0.05, eps=1e-4, weight_decay=0.1)
    opt = AdaHessian(
        params, **settings, hessian_power=k, block_stat=stat, decoupled_weight_decay=not coupled
    )
    for _ in range(3):
        quadratic_loss(params, curvatures).backward(create_graph=True)
        opt.step()
        opt.zero_grad()
    for p, x0, a in zip(params, starts, curvatures):
        expected = reference_run(
            x0, a, steps=3, hessian_steps={1, 2, 3}, lr=0.05, eps=1e-4, wd=0.1, k=k, coupled=coupled, stat=stat
        )
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def test_lazy_hessian_schedule_and_bias_correction() -> None:
    params, curvatures = quadratic_params()
    starts = [p.detach().clone() for p in params]
    opt = AdaHessian(params, lr=0.05, weight_decay=0.0, update_every=3)
    schedule, updates = [], []
    for _ in range(7):
        hessian_step = opt.needs_create_graph()
        schedule.append(hessian_step)
        before = opt.generator.get_state().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a plain backward on a non-Hessian step is the intended use
            quadratic_loss(params, curvatures).backward(create_graph=hessian_step)
            opt.step()
        assert torch.equal(before, opt.generator.get_state()) != hessian_step  # probes only when estimating
        updates.append(opt.state[params[0]]["hessian_updates"])
        opt.zero_grad()
    assert schedule == [True, False, False, True, False, False, True]
    assert updates == [1, 1, 1, 2, 2, 2, 3]
    for p, x0, a in zip(params, starts, curvatures):
        expected = reference_run(
            x0, a, steps=7, hessian_steps={1, 4, 7}, lr=0.05, eps=1e-4, wd=0.0, k=1.0, coupled=False, stat="abs_mean"
        )
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def test_lazy_step_two_uses_hessian_count_for_bias_correction() -> None:
    x = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = AdaHessian([x], lr=0.1, eps=0.0, weight_decay=0.0, update_every=2)
    for create_graph in (True, False):
        (0.5 * 4.0 * x * x).sum().backward(create_graph=create_graph)
        opt.step()
        opt.zero_grad()
    # step 1: g = 4, m_hat = 4, v_hat = 16 -> x1 = 1 - 0.1 * 4 / 4 = 0.9
    # step 2: g = 3.6, m = 0.9 * 0.4 + 0.1 * 3.6 = 0.72, m_hat = 0.72 / 0.19; v = 0.001 * 16 with one
    # Hessian update -> v_hat = 16 (correcting by t = 2 would give 16 * 0.001 / 0.001999)
    assert x.item() == pytest.approx(0.9 - 0.1 * (0.72 / 0.19) / 4.0, rel=1e-13)


def test_each_parameter_uses_its_own_state() -> None:
    params, curvatures = quadratic_params()
    starts = [p.detach().clone() for p in params]
    opt = AdaHessian(
        [{"params": [params[0]], "block_stat": "signed_mean"}, {"params": [params[1]], "lr": 0.02}],
        lr=0.05,
        weight_decay=0.0,
    )
    for step in range(3):
        loss = quadratic_loss(params, curvatures) if step != 1 else quadratic_loss(params[1:], curvatures[1:])
        loss.backward(create_graph=True)  # step 2: params[0] has no gradient and must not move
        if step == 1:
            assert params[0].grad is None
            frozen = params[0].detach().clone()
        opt.step()
        if step == 1:
            assert torch.equal(params[0].detach(), frozen)
        opt.zero_grad()
    first = reference_run(
        starts[0], curvatures[0], steps=2, hessian_steps={1, 2}, lr=0.05, eps=1e-4, wd=0.0, k=1.0,
        coupled=False, stat="signed_mean",
    )
    second = reference_run(
        starts[1], curvatures[1], steps=3, hessian_steps={1, 2, 3}, lr=0.02, eps=1e-4, wd=0.0, k=1.0,
        coupled=False, stat="abs_mean",
    )
    torch.testing.assert_close(params[0].detach(), first, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(params[1].detach(), second, rtol=1e-12, atol=1e-14)


def test_gradient_without_graph_warns_once_and_is_skipped() -> None:
    with_graph = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    no_graph = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    opt = AdaHessian([with_graph, no_graph], lr=0.1)
    caught = []
    for _ in range(2):
        (with_graph**2).sum().backward(create_graph=True)
        no_graph.grad = torch.ones(1, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            opt.step()
        caught += [x for x in w if issubclass(x.category, RuntimeWarning)]
        opt.zero_grad()
    assert len(caught) == 1 and "create_graph" in str(caught[0].message)
    assert no_graph.item() == 3.0  # no curvature estimate yet, so no step
    assert not torch.equal(with_graph.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    (no_graph**2).sum().backward(create_graph=True)
    opt.step()
    assert no_graph.item() < 3.0  # moves once it has an estimate


@pytest.mark.parametrize("fast", [False, True])
def test_step_releases_graphs(fast: bool) -> None:
    torch.manual_seed(0)
    model = conv_bn_net().double()
    images, labels = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    opt = AdaHessian(model.parameters(), lr=0.01)
    captured: list[weakref.ref] = []
    model[1].register_forward_hook(lambda _m, _i, out: captured.append(weakref.ref(out)))

    def one_step() -> None:
        with fast_forward(double_backward=True) if fast else contextlib.nullcontext():
            out = model(images)
        loss = nn.functional.cross_entropy(out, labels)
        del out
        loss.backward(create_graph=True)
        graph_grads = [weakref.ref(p.grad) for p in model.parameters()]
        opt.step()  # zero_grad deliberately not called: step itself must let go of the graph
        assert all(p.grad.grad_fn is None for p in model.parameters())
        assert all(ref() is None for ref in graph_grads)

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # isinstance on torch's deprecated aliases
            return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))

    one_step()
    one_step()
    baseline = live_tensors()
    for _ in range(4):
        one_step()
    assert live_tensors() == baseline
    assert all(ref() is None for ref in captured)


def test_state_dict_round_trip_is_bit_exact(tmp_path) -> None:
    batches = make_batches(6)
    settings = dict(lr=0.05, update_every=2, n_samples=2)

    model, _, _ = tiny_problem(torch.float32)
    train(model, AdaHessian(model.parameters(), **settings, seed=11), batches)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, _, _ = tiny_problem(torch.float32)
    opt = AdaHessian(model.parameters(), **settings, seed=11)
    train(model, opt, batches[:3])
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")

    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model, _, _ = tiny_problem(torch.float32, seed=99)
    opt = AdaHessian(model.parameters(), **settings, seed=12345)  # generator state must come from the file
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    assert opt.needs_create_graph() is False  # 3 calls done: the schedule resumes mid-cycle
    train(model, opt, batches[3:])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), uninterrupted))


# ----------------------------------------------------------------------------- validation and factory


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=-1.0), "lr"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(hessian_power=0.0), "hessian_power"),
        (dict(hessian_power=1.5), "hessian_power"),
        (dict(betas=(1.0, 0.999)), "betas"),
        (dict(betas=(0.9, -0.1)), "betas"),
        (dict(update_every=0), "update_every"),
        (dict(n_samples=0), "n_samples"),
        (dict(block_stat="median"), "block_stat"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaHessian([nn.Parameter(torch.zeros(1))], **kwargs)
    group_kwargs = {k: v for k, v in kwargs.items() if k not in ("update_every", "n_samples")}
    if group_kwargs:  # per-group settings are checked too
        opt = AdaHessian([nn.Parameter(torch.zeros(1))])
        with pytest.raises(ValueError, match=match):
            opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], **group_kwargs})


# ----------------------------------------------------------------------------- the registry


TORCH_ENTRIES = {name: entry.builder.partition(":")[2] for name, entry in optim.REGISTRY.items()
                 if entry.source == "torch.optim"}
# Where the registry's defaults are not torch's: the study's SGD.
NOT_TORCH_DEFAULTS = {("sgd", "lr"), ("sgd", "momentum"), ("sgd", "weight_decay")}


class ConvBnNet(nn.Module):
    """conv -> batch norm -> conv -> linear: a first layer, a hidden conv kernel, norms, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 3, 3)
        self.norm = nn.BatchNorm2d(3)
        self.hidden = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(torch.relu(self.norm(self.stem(x))))).flatten(1))


def test_every_torch_optimizer_is_registered_with_torchs_defaults() -> None:
    """Every optimizer class of torch.optim but SparseAdam (sparse gradients only) and LBFGS (full-batch line
    searches, a closure evaluated many times a step) by its lower-case name, with torch's defaults."""
    import inspect

    classes = {n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
               and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)} - {"Optimizer", "SparseAdam", "LBFGS"}
    assert set(TORCH_ENTRIES.values()) == classes - {"Muon"} and {n.lower() for n in classes} <= set(optim.names())
    for name, cls in TORCH_ENTRIES.items():
        signature = inspect.signature(getattr(torch.optim, cls)).parameters
        for option, default in optim.REGISTRY[name].defaults().items():
            assert option in signature, (name, option)
            if (name, option) not in NOT_TORCH_DEFAULTS:
                assert default == signature[option].default, (name, option)


@pytest.mark.parametrize("name", TORCH_ENTRIES)
def test_create_steps_as_torchs_own_class(name: str) -> None:
    """Bit-identical to torch's class with the same hyperparameters, over a few steps of a conv net."""
    batches = make_batches(3)
    ours, theirs = ConvBnNet(), ConvBnNet()
    given = {"weight_decay": 1e-2} if "weight_decay" in optim.REGISTRY[name].defaults() else {}
    opt = optim.create(name, ours.named_parameters(), lr=0.01, **given)
    reference = getattr(torch.optim, TORCH_ENTRIES[name])(theirs.parameters(),
                                                           **optim.resolved(name, {"lr": 0.01, **given}))
    assert type(opt) is type(reference)
    for model, o in ((ours, opt), (theirs, reference)):
        train(model, o, batches)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b), name


def test_sgd_from_the_registry_is_the_studys() -> None:
    sgd = optim.create("sgd", [nn.Parameter(torch.zeros(2))], nesterov=True)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.95, True, 5e-4)
    assert needs_create_graph(sgd) is False


def test_adahessian_from_the_registry() -> None:
    ada = optim.create("adahessian", [nn.Parameter(torch.zeros(2))], weight_decay=1e-3, update_every=2,
                       block_stat="signed_mean", hessian_samples=3)
    assert isinstance(ada, AdaHessian)
    group = ada.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["block_stat"]) == (0.15, 1e-3, "signed_mean")
    assert group["decoupled_weight_decay"] is True and group["eps"] == 1e-4
    assert (ada.update_every, ada.n_samples) == (2, 3)
    assert needs_create_graph(ada) is True


@pytest.mark.parametrize(("name", "args", "message"), [
    ("adam", {"momentum": 0.9}, "adam takes no option 'momentum'"),
    ("sam", {"rho": 0.1, "base": "adahessian"}, "base of sam must be one of"),
    ("sam", {"base": "sgd", "amsgrad": True}, "sam takes no option 'amsgrad'"),
    ("nope", {}, "optimizer: unknown 'nope'"),
    ("torch.optim:Nope", {}, "torch.optim has no 'Nope'"),
    ("no_such_module:Opt", {}, "cannot import no_such_module"),
    ("sam", {"rho": -1.0}, "rho must be >= 0"),
])
def test_bad_options_are_one_error(name: str, args: dict, message: str) -> None:
    from minimascope.errors import MinimascopeError

    with pytest.raises(MinimascopeError, match=message):
        optim.create(name, [nn.Parameter(torch.zeros(2))], **args)


def test_an_imported_class_takes_its_init_arguments() -> None:
    params = [nn.Parameter(torch.ones(2))]
    opt = optim.create("torch.optim:RAdam", params, lr=0.5, decoupled_weight_decay=True)
    assert type(opt) is torch.optim.RAdam and opt.param_groups[0]["lr"] == 0.5
    entry = optim.lookup("torch.optim:RAdam")
    assert entry.source == "torch.optim:RAdam" and entry.defaults()["eps"] == 1e-8 and not entry.needs_closure


# ----------------------------------------------------------------------------- SAM and ASAM


def sam_step(name: str, params: list[nn.Parameter], loss_fn, **args) -> list[torch.Tensor]:
    """One SAM step as the training loop takes it; returns the weights the closure saw (w + e)."""
    opt = optim.create(name, params, lr=0.1, momentum=0.0, weight_decay=0.0, **args)
    seen = []

    def closure() -> torch.Tensor:
        seen.extend(p.detach().clone() for p in params)
        loss = loss_fn(params)
        loss.backward()
        return loss

    loss_fn(params).backward()
    opt.step(closure)
    return seen


def test_sam_step_is_its_closed_form_on_a_quadratic() -> None:
    params, a = quadratic_params()
    w = [p.detach().clone() for p in params]
    seen = sam_step("sam", params, lambda ps: quadratic_loss(ps, a), rho=0.05)
    g = [ai * wi for ai, wi in zip(a, w)]
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))  # one norm over every parameter
    perturbed = [wi + 0.05 * gi / norm for wi, gi in zip(w, g)]
    expected = [wi - 0.1 * ai * pi for wi, ai, pi in zip(w, a, perturbed)]  # SGD with the gradient at w + e
    for got, want in zip(seen, perturbed):
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-14, atol=1e-15)


def test_asam_step_is_its_closed_form_and_sees_through_a_rescaling() -> None:
    """ASAM's e = rho T² g / ‖T g‖ with T = |w| + eta; with eta = 0 the perturbed point of f(s ⊙ v) at
    v = w / s is (w + e) / s: the same function value, which SAM's is not."""
    params, a = quadratic_params()
    w = [p.detach().clone() for p in params]
    seen = sam_step("asam", params, lambda ps: quadratic_loss(ps, a), rho=0.5, eta=0.01)
    g = [ai * wi for ai, wi in zip(a, w)]
    t = [wi.abs() + 0.01 for wi in w]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    perturbed = [wi + 0.5 * ti * ti * gi / norm for wi, ti, gi in zip(w, t, g)]
    for got, want in zip(seen, perturbed):
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
    for p, wi, ai, pi in zip(params, w, a, perturbed):
        torch.testing.assert_close(p.detach(), wi - 0.1 * ai * pi, rtol=1e-14, atol=1e-15)

    scales = [torch.full_like(wi, 10.0) ** torch.arange(wi.numel(), dtype=wi.dtype).remainder(3).view(wi.shape)
              for wi in w]

    def perturbed_loss(name: str, rescaled: bool) -> torch.Tensor:
        s = scales if rescaled else [torch.ones_like(wi) for wi in w]
        vs = [nn.Parameter(wi / si) for wi, si in zip(w, s)]
        seen = sam_step(name, vs, lambda ps: quadratic_loss([p * si for p, si in zip(ps, s)], a), eta=0.0)
        return quadratic_loss([v * si for v, si in zip(seen, s)], a)

    torch.testing.assert_close(perturbed_loss("asam", True), perturbed_loss("asam", False), rtol=1e-12, atol=0)
    assert not torch.isclose(perturbed_loss("sam", True), perturbed_loss("sam", False), rtol=1e-3)


def test_sam_updates_batch_norm_statistics_on_the_first_pass_only() -> None:
    from minimascope.train import _loss_and_gradients

    images, labels = make_batches(1)[0]
    model, reference = ConvBnNet(), ConvBnNet()
    opt = optim.create("sam", model.named_parameters(), base="adamw", rho=0.05)
    nn.functional.cross_entropy(model(images), labels).backward()
    opt.step(lambda: _loss_and_gradients(model, images, labels))
    reference(images)  # one training-mode pass at w
    for name, buffer in reference.norm.named_buffers():
        assert torch.equal(getattr(model.norm, name), buffer), name
    assert model.norm.track_running_stats and int(model.norm.num_batches_tracked) == 1
    assert not torch.equal(model.hidden.weight, reference.hidden.weight)  # it did step


# ----------------------------------------------------------------------------- Muon


def test_muon_takes_the_hidden_layers_and_adamw_the_rest() -> None:
    """The hidden conv kernel, flattened, by torch.optim.Muon; the first conv, the norm, the biases and the
    classifier by AdamW: the same numbers as the two torch optimizers on those parameters by hand."""
    batches = make_batches(3)
    model, reference = ConvBnNet(), ConvBnNet()
    opt = optim.create("muon", model.named_parameters(), weight_decay=0.01)
    assert optim.describe(opt) == {"split": {
        "muon": ["hidden.weight"],
        "adamw": ["stem.weight", "stem.bias", "norm.weight", "norm.bias", "hidden.bias", "head.weight", "head.bias"]}}
    flat = nn.Parameter(reference.hidden.weight.detach().clone().view(4, -1))
    muon = torch.optim.Muon([flat], lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.01)
    others = [p for n, p in reference.named_parameters() if n != "hidden.weight"]
    adamw = torch.optim.AdamW(others, lr=1e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.01)
    train(model, opt, batches)
    for images, labels in batches:
        with torch.no_grad():
            reference.hidden.weight.copy_(flat.view_as(reference.hidden.weight))
        nn.functional.cross_entropy(reference(images), labels).backward()
        flat.grad = reference.hidden.weight.grad.view(4, -1)
        muon.step()
        adamw.step()
        for o in (muon, adamw):
            o.zero_grad()
        reference.zero_grad()
    with torch.no_grad():
        reference.hidden.weight.copy_(flat.view_as(reference.hidden.weight))
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name
    # a schedule reaches both groups
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, [1], 0.1)
    opt.step()
    scheduler.step()
    assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == pytest.approx([0.002, 1e-4])


def test_a_pytorch_optimizer_class_by_import_path() -> None:
    """minimascope[zoo]: pytorch_optimizer's Lion by import path; its first step from zero momentum is
    w - lr · sign(g) (Chen et al. 2023), weight decay 0."""
    pytest.importorskip("pytorch_optimizer")
    from minimascope.config import TrainConfig

    config = TrainConfig(optimizer="pytorch_optimizer:Lion", lr=0.1, weight_decay=0.0)
    params, a = quadratic_params()
    w = [p.detach().clone() for p in params]
    opt = optim.create(config.optimizer, params, **config.optimizer_hyperparameters())
    quadratic_loss(params, a).backward()
    opt.step()
    for p, wi, ai in zip(params, w, a):
        torch.testing.assert_close(p.detach(), wi - 0.1 * torch.sign(ai * wi))
