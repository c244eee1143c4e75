"""The optimizers minimascope trains with: a registry of named optimizers and any optimizer class by its
import path.

Every optimizer is an :class:`Entry`: its name, its builder (``"module:callable"``, called as
``builder(params, **hyperparameters)``), its hyperparameters with their defaults and help, whether its
``step`` needs a closure (SAM evaluates the gradient a second time) and whether its backward needs
``create_graph=True`` (AdaHessian's Hessian steps). ``create(name, params, **hyperparameters)`` builds
one, ``names()`` lists the registry, ``lookup(name)`` also reads an import path ``module:Class`` (its
hyperparameters are its ``__init__``'s keyword arguments).

Adding an optimizer: a module here holding its builder (or an existing class, named by import path),
and one :class:`Entry` in ``REGISTRY``.

This module imports no torch, so that a training config is checked against the registry before the
slow imports: builders are named by import path and imported only when an optimizer is created.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from minimascope.errors import MinimascopeError

BLOCK_STATS = ("abs_mean", "signed_mean")  # AdaHessian's kernel-window statistics (curvature.block_statistic)
REQUIRED = inspect.Parameter.empty  # the default of a hyperparameter that must be given


@dataclass(frozen=True)
class Hyperparameter:
    """One keyword argument of a builder. ``field``: a training option of the same name (lr, momentum,
    weight_decay, betas, eps, nesterov, AdaHessian's) supplies it; False for an option that only shares
    the name (Adafactor's pair of eps), which is then given through ``optimizer_args``."""

    name: str
    default: Any
    help: str = ""
    field: bool = True


@dataclass(frozen=True)
class Entry:
    name: str
    builder: str  # "module:callable", called as builder(params, **hyperparameters)
    hyperparameters: tuple[Hyperparameter, ...]
    source: str  # where the update rule comes from: torch.optim, minimascope, or an import path
    summary: str = ""
    needs_closure: bool = False  # step(closure): the closure re-evaluates loss and gradients at the current weights
    second_order: bool = False  # backward(create_graph=True), at least on some steps
    named_params: bool = False  # the builder takes (name, parameter) pairs, not bare parameters
    wraps: bool = False  # the option ``base`` names a registered optimizer whose options it also takes
    open: bool = False  # takes any keyword (an imported class with **kwargs): option names are not checked

    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hyperparameters if h.default is not REQUIRED}


def _lr(default: float, text: str = "learning rate") -> Hyperparameter:
    return Hyperparameter("lr", default, text)


def _betas(default: tuple[float, float] = (0.9, 0.999)) -> Hyperparameter:
    return Hyperparameter("betas", default, "decay of the moving averages of the gradient and its square")


def _eps(default: float) -> Hyperparameter:
    return Hyperparameter("eps", default, "added to the denominator")


def _weight_decay(default: float = 0.0, text: str = "L2 penalty, added to the gradient") -> Hyperparameter:
    return Hyperparameter("weight_decay", default, text)


def _option(name: str, default: Any, text: str) -> Hyperparameter:
    return Hyperparameter(name, default, text, field=False)


def _torch(name: str, cls: str, summary: str, *hyperparameters: Hyperparameter) -> Entry:
    return Entry(name, f"torch.optim:{cls}", hyperparameters, "torch.optim", summary)


_DECOUPLED = _option("decoupled_weight_decay", False, "decay the weights directly (AdamW-style) instead of L2")
_ADAM = (_betas(), _eps(1e-8))
_SAM_OPTIONS = (
    _option("base", "sgd", "the registered optimizer that takes the step from the perturbed point's gradient"),
)

REGISTRY: dict[str, Entry] = {entry.name: entry for entry in (
    _torch("sgd", "SGD", "SGD with momentum; the defaults are the study's, not torch's",
           _lr(0.01, "learning rate (the study's)"), Hyperparameter("momentum", 0.95, "momentum (the study's)"),
           _option("dampening", 0.0, "dampening of the momentum"),
           Hyperparameter("nesterov", False, "Nesterov momentum"),
           _weight_decay(5e-4, "L2 penalty, added to the gradient (the study's)")),
    _torch("adam", "Adam", "Adam (Kingma & Ba 2015)", _lr(1e-3), *_ADAM, _weight_decay(),
           _option("amsgrad", False, "AMSGrad's maximum of the second moments"), _DECOUPLED),
    _torch("adamw", "AdamW", "Adam with decoupled weight decay (Loshchilov & Hutter 2019)", _lr(1e-3), *_ADAM,
           _weight_decay(0.01, "decoupled weight decay: w -= lr * weight_decay * w"),
           _option("amsgrad", False, "AMSGrad's maximum of the second moments")),
    _torch("nadam", "NAdam", "Adam with Nesterov momentum (Dozat 2016)", _lr(2e-3), *_ADAM, _weight_decay(),
           _option("momentum_decay", 4e-3, "momentum decay psi"), _DECOUPLED),
    _torch("radam", "RAdam", "rectified Adam (Liu et al. 2020)", _lr(1e-3), *_ADAM, _weight_decay(), _DECOUPLED),
    _torch("rmsprop", "RMSprop", "RMSprop (Hinton 2012)", _lr(0.01), _option("alpha", 0.99, "smoothing constant"),
           _eps(1e-8), _weight_decay(), Hyperparameter("momentum", 0.0, "momentum"),
           _option("centered", False, "normalise by the estimated variance of the gradient")),
    _torch("adagrad", "Adagrad", "Adagrad (Duchi et al. 2011)", _lr(0.01),
           _option("lr_decay", 0.0, "learning-rate decay"), _weight_decay(),
           _option("initial_accumulator_value", 0.0, "initial sum of squared gradients"), _eps(1e-10)),
    _torch("adadelta", "Adadelta", "Adadelta (Zeiler 2012)", _lr(1.0, "coefficient scaling the delta"),
           _option("rho", 0.9, "decay of the running averages"), _eps(1e-6), _weight_decay()),
    _torch("adamax", "Adamax", "Adam with the infinity norm (Kingma & Ba 2015)", _lr(2e-3), *_ADAM, _weight_decay()),
    _torch("asgd", "ASGD", "averaged SGD (Polyak & Juditsky 1992)", _lr(0.01), _option("lambd", 1e-4, "decay term"),
           _option("alpha", 0.75, "power for the eta update"), _option("t0", 1e6, "step at which averaging starts"),
           _weight_decay()),
    _torch("rprop", "Rprop", "resilient backpropagation (Riedmiller & Braun 1993)", _lr(0.01),
           _option("etas", (0.5, 1.2), "multiplicative decrease and increase of the step size"),
           _option("step_sizes", (1e-6, 50.0), "smallest and largest step size")),
    _torch("adafactor", "Adafactor", "Adafactor, factored second moments (Shazeer & Stern 2018)", _lr(0.01),
           _option("beta2_decay", -0.8, "decay rate of the second moment's beta2"),
           _option("eps", (None, 1e-3), "(added to the squared gradient, clipping floor of the weights' RMS)"),
           _option("d", 1.0, "clipping threshold of the update's RMS"), _weight_decay(0.0, "decoupled weight decay")),
    Entry("muon", "minimascope.optim.muon:build", (
        _lr(0.02, "Muon's learning rate (matrices)"), Hyperparameter("momentum", 0.95, "Muon's momentum"),
        Hyperparameter("nesterov", True, "Muon's Nesterov momentum"),
        _weight_decay(0.0, "decoupled weight decay of both groups"),
        _option("ns_steps", 5, "Newton-Schulz iterations"),
        _option("adjust_lr_fn", None, "Muon's learning-rate scaling by shape: original (None), match_rms_adamw"),
        _option("adamw_lr", 1e-3, "AdamW's learning rate (biases, norms, first and last layer)"),
        _betas((0.9, 0.95)), _eps(1e-10)),
        "minimascope", "torch.optim.Muon on hidden layers' weights (conv kernels flattened), AdamW (betas, eps) on "
                       "biases, norms, the first and the last layer (Jordan et al. 2024)", named_params=True),
    Entry("sam", "minimascope.optim.sam:build", (
        *_SAM_OPTIONS, _option("rho", 0.05, "radius of the ascent step"),
        _option("adaptive", False, "ASAM's scale-invariant neighbourhood"),
        _option("eta", 0.01, "ASAM: T_w = |w| + eta")),
        "minimascope", "sharpness-aware minimisation around any first-order base (Foret et al. 2021); the base's "
                       "options pass through", needs_closure=True, named_params=True, wraps=True),
    Entry("asam", "minimascope.optim.sam:build", (
        *_SAM_OPTIONS, _option("rho", 0.5, "radius of the ascent step"),
        _option("adaptive", True, "ASAM's scale-invariant neighbourhood"),
        _option("eta", 0.01, "T_w = |w| + eta")),
        "minimascope", "adaptive SAM (Kwon et al. 2021): SAM with the neighbourhood scaled by |w| + eta",
        needs_closure=True, named_params=True, wraps=True),
    Entry("adahessian", "minimascope.optim.adahessian:build", (
        _lr(0.15, "learning rate (the study's)"), _betas(), _eps(1e-4),
        _weight_decay(5e-4, "decoupled unless coupled_weight_decay (the study's)"),
        Hyperparameter("hessian_power", 1.0, "Hessian power k in (0, 1]"),
        Hyperparameter("update_every", 1, "estimate the Hessian diagonal every k steps"),
        Hyperparameter("block_stat", "abs_mean", "conv-window statistic: abs_mean or signed_mean"),
        Hyperparameter("hessian_samples", 1, "Hutchinson probes per Hessian step"),
        Hyperparameter("coupled_weight_decay", False, "add the weight decay to the gradient (L2)"),
        Hyperparameter("seed", 0, "seed of the Hutchinson probes (the run's seed)")),
        "minimascope", "AdaHessian (Yao et al. 2021), the authors' CIFAR setting", second_order=True),
)}


def names() -> list[str]:
    return list(REGISTRY)


def _import(path: str, what: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise MinimascopeError(f"{what}: expected module:Class, got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MinimascopeError(f"{what}: cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise MinimascopeError(f"{what}: {module_name} has no {attribute!r}") from None


def _imported_entry(path: str) -> Entry:
    """An optimizer class named by import path, its hyperparameters read from its ``__init__``."""
    cls = _import(path, "optimizer")
    if not (inspect.isclass(cls) and callable(getattr(cls, "step", None))):
        raise MinimascopeError(f"optimizer: {path} is not an optimizer class")
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, params
    keywords = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return Entry(path, path, tuple(Hyperparameter(p.name, p.default) for p in keywords), path,
                 (inspect.getdoc(cls) or "").split("\n")[0],
                 open=any(p.kind is p.VAR_KEYWORD for p in parameters))


def lookup(name: str) -> Entry:
    """The registry's entry of ``name``, or the entry of the class an import path ``module:Class`` names."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        return _imported_entry(name)
    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise MinimascopeError(f"optimizer: unknown {name!r}{hint}; choose one of {', '.join(REGISTRY)} "
                           f"or give an import path module:Class")


def base_of(entry: Entry, args: Mapping[str, Any]) -> Entry | None:
    """The base optimizer a wrapper (sam, asam) steps with, checked; None for other entries."""
    if not entry.wraps:
        return None
    name = args.get("base", entry.defaults()["base"])
    base = REGISTRY.get(name) if isinstance(name, str) else None
    if base is None or base.wraps or base.needs_closure or base.second_order:
        usable = [n for n, e in REGISTRY.items() if not (e.wraps or e.needs_closure or e.second_order)]
        raise MinimascopeError(f"optimizer_args: base of {entry.name} must be one of {', '.join(usable)}, "
                               f"got {name!r}")
    return base


def options(name: str, args: Mapping[str, Any] = {}) -> tuple[dict[str, Hyperparameter], bool]:
    """Every hyperparameter ``name`` takes (a wrapper's and its base's), and whether it takes any keyword."""
    entry = lookup(name)
    base = base_of(entry, args)
    own = {h.name: h for h in entry.hyperparameters}
    if base is None:
        return own, entry.open
    return {**{h.name: h for h in base.hyperparameters}, **own}, base.open


def check_args(name: str, args: Mapping[str, Any], fields: Iterable[str] = ()) -> None:
    """An option of ``args`` that ``name`` does not take, or that is given as a training option (one of
    ``fields``), as one error naming it; so is a required option left out."""
    taken, takes_any = options(name, args)
    fields = set(fields)
    for key in args:
        if key in taken and taken[key].field and key in fields:
            raise MinimascopeError(f"optimizer_args: {key} is a training option: give it as {key}, not in "
                                   f"optimizer_args")
        if key not in taken and not takes_any:
            close = difflib.get_close_matches(key, taken, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; it takes {', '.join(taken) or 'none'}"
            raise MinimascopeError(f"optimizer_args: {name} takes no option {key!r}{hint}")
    for key, hyperparameter in taken.items():
        if hyperparameter.default is REQUIRED and key not in args and key not in fields:
            raise MinimascopeError(f"optimizer_args: {name} needs {key}")


def resolved(name: str, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of ``name`` with a default (a wrapper's base's too), ``hyperparameters`` in place of
    their defaults; one it does not take is a MinimascopeError."""
    check_args(name, hyperparameters)
    entry = lookup(name)
    base = base_of(entry, hyperparameters)
    return {**(base.defaults() if base else {}), **entry.defaults(), **hyperparameters}


def named(params: Iterable[Any]) -> list[tuple[str, Any]]:
    """(name, parameter) pairs of parameters given bare or as pairs (bare ones are named by position)."""
    return [p if isinstance(p, tuple) else (str(i), p) for i, p in enumerate(params)]


def _bare(params: Iterable[Any]) -> list[Any]:
    return [p[1] if isinstance(p, tuple) else p for p in params]


def create(name: str, params: Iterable[Any], **hyperparameters: Any) -> Any:
    """The optimizer ``name`` (registered or ``module:Class``) over ``params``: parameters, parameter
    groups, or (name, parameter) pairs (the names say which layers Muon takes). Hyperparameters not given
    take the entry's defaults; one it does not take, or a bad value, is a MinimascopeError."""
    entry = lookup(name)
    values = resolved(name, hyperparameters)
    params = list(params)
    builder = _import(entry.builder, f"optimizer {name}")
    try:
        return builder(params if entry.named_params else _bare(params), **values)
    except ValueError as exc:
        raise MinimascopeError(f"optimizer {name}: {exc}") from None


def needs_create_graph(optimizer: Any) -> bool:
    """Whether the next ``optimizer.step()`` needs ``loss.backward(create_graph=True)``."""
    method = getattr(optimizer, "needs_create_graph", None)
    return bool(method()) if callable(method) else False


def describe(optimizer: Any) -> dict[str, Any]:
    """What an optimizer says of itself for run.json (Muon: which parameters each group holds)."""
    method = getattr(optimizer, "describe", None)
    return method() if callable(method) else {}


def __getattr__(name: str) -> Any:
    # minimascope.optim.AdaHessian, where it was before the registry; imported on first use (this module: no torch)
    if name == "AdaHessian":
        return _import("minimascope.optim.adahessian:AdaHessian", name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
