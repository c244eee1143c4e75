"""minimascope.curvature beyond what tests/test_optim.py checks through AdaHessian: Hessian-vector products
of a network against its exact Hessian, the window dimensions, and that the optimizer uses these very helpers."""

from __future__ import annotations

import torch
from torch import nn

from minimascope import curvature
from minimascope.optim import adahessian


def test_hessian_vector_products_rebuild_exact_network_hessian() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).double()
    images, labels = torch.randn(5, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    names, params = zip(*model.named_parameters())
    sizes = [p.numel() for p in params]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = {n: c.view_as(p) for n, c, p in zip(names, flat.split(sizes), params)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, chunks, (images,)), labels)

    exact = torch.autograd.functional.hessian(loss_of, torch.cat([p.detach().flatten() for p in params]))
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(images), labels), params, create_graph=True)
    columns = []
    for unit in torch.eye(sum(sizes), dtype=torch.float64):
        vectors = [c.view_as(p) for c, p in zip(unit.split(sizes), params)]
        products = curvature.hessian_vector_product(grads, params, vectors, retain_graph=True)
        columns.append(torch.cat([h.flatten() for h in products]))
    assert exact.abs().max() > 1e-2
    torch.testing.assert_close(torch.stack(columns, 1), exact, rtol=1e-10, atol=1e-12)


def test_block_dims_are_the_kernel_window() -> None:
    assert [curvature.block_dims(n) for n in range(6)] == [(), (), (), (2,), (2, 3), (2, 3, 4)]


def test_optimizer_uses_these_helpers_not_copies() -> None:
    for name in ("BLOCK_STATS", "block_dims", "block_statistic", "hutchinson_diagonal"):
        assert getattr(adahessian, name) is getattr(curvature, name)
