"""CKA's uncertainty on these networks: subsampled-image intervals and shuffled-image baselines."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from minimascope.bootstrap import (
    BOOTSTRAP_FORMAT,
    LABEL,
    bootstrap_layers,
    read_bootstrap,
    subsample_interval,
    write_bootstrap,
)
from minimascope.errors import MinimascopeError
from minimascope.similarity import linear_cka


def activations(seed: int, n: int = 120) -> dict[str, torch.Tensor]:
    """A narrow layer and a wide one (wider than n, where plain CKA's bias is large), sharing a signal."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 5, generator=torch.Generator().manual_seed(99))
    narrow = torch.cat([shared, torch.randn(n, 10, generator=generator)], 1)
    wide = torch.cat([shared @ torch.randn(5, 50, generator=generator), torch.randn(n, 1000, generator=generator)], 1)
    return {"narrow": narrow, "wide": wide}


def test_interval_covers_the_full_sample_value_and_matches_linear_cka() -> None:
    acts_a, acts_b = activations(0), activations(1)
    result = bootstrap_layers(acts_a, acts_b, ["narrow", "wide"], ["cka", "cka_debiased", "svcca"], 50)
    assert set(result.values) == {"cka", "cka_debiased"} and (result.n, result.subsample) == (120, 60)
    for measure, columns in result.values.items():
        for i, name in enumerate(result.layers):
            value = columns["value"][i]
            assert value == pytest.approx(linear_cka(acts_a[name], acts_b[name], debiased=measure == "cka_debiased"),
                                          abs=1e-5)
            assert columns["low"][i] <= value <= columns["high"][i]
            assert columns["high"][i] - columns["low"][i] > 1e-4


def test_identical_networks_value_one_and_baselines_show_the_bias() -> None:
    acts = activations(0)
    result = bootstrap_layers(acts, acts, ["narrow", "wide"], ["cka", "cka_debiased"], 20)
    for measure in ("cka", "cka_debiased"):
        np.testing.assert_allclose(result.values[measure]["value"], 1.0, atol=1e-6)
        np.testing.assert_allclose(result.values[measure]["low"], 1.0, atol=1e-6)
        np.testing.assert_allclose(result.values[measure]["high"], 1.0, atol=1e-6)
    wide = result.layers.index("wide")
    plain = result.values["cka"]["baseline"]
    assert plain[wide] > 0.2 and plain[wide] > plain[1 - wide]  # 1050 features on 120 images: plain CKA's bias
    assert abs(result.values["cka_debiased"]["baseline"][wide]) < 0.05


def test_the_interval_is_basic_and_rescaled() -> None:
    subs = np.array([0.4, 0.5, 0.6])
    low, high = subsample_interval(0.7, subs, 100, 50, 0.5)  # m = n/2: factor 1, centred on the subsamples' mean
    assert (low, high) == pytest.approx((0.65, 0.75))


def test_reader_round_trip_and_foreign_files(tmp_path: Path) -> None:
    result = bootstrap_layers(activations(0, 40), activations(1, 40), ["narrow"], ["cka_debiased"], 10)
    path = write_bootstrap(result, tmp_path)
    record = json.loads(path.read_text())
    assert record["format"] == BOOTSTRAP_FORMAT and record["label"] == LABEL
    assert read_bootstrap(path) == result
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    record["measures"]["cka_debiased"]["low"] = ["nan"]
    (tmp_path / "bad.json").write_text(json.dumps(record))
    for name, words in (("other.json", "not a minimascope-bootstrap-v1"), ("bad.json", "finite number")):
        with pytest.raises(MinimascopeError, match=words) as caught:
            read_bootstrap(tmp_path / name)
        assert "\n" not in str(caught.value)


def test_bad_requests_are_refused() -> None:
    acts = activations(0, 40)
    with pytest.raises(MinimascopeError, match="cka or cka_debiased"):
        bootstrap_layers(acts, acts, ["narrow"], ["procrustes"], 10)
    with pytest.raises(MinimascopeError, match="at least 8 images"):
        bootstrap_layers(activations(0, 6), activations(1, 6), ["narrow"], ["cka"], 10)


def test_the_report_shows_each_pair_on_these_networks() -> None:
    from types import SimpleNamespace

    from minimascope.report.page import environment
    from minimascope.report.sections.similarity import bootstrap_tables

    result = bootstrap_layers(activations(0, 40), activations(1, 40), ["narrow", "wide"], ["cka", "cka_debiased"], 10)
    comparisons = [SimpleNamespace(label="sgd vs adahessian", seed=0, bootstrap=result),
                   SimpleNamespace(label="within sgd", seed=0, bootstrap=None)]  # none made: left out
    tables = bootstrap_tables(comparisons)
    assert [t["title"] for t in tables] == ["sgd vs adahessian, seed 0"]
    assert [row["layer"] for row in tables[0]["rows"]] == ["narrow", "wide"] and tables[0]["level"] == "95%"
    value, baseline = tables[0]["rows"][0]["cells"][1]
    low, high = (result.values["cka_debiased"][k][0] for k in ("low", "high"))
    assert value == f"{result.values['cka_debiased']['value'][0]:.3f} [{low:.3f}, {high:.3f}]"
    html = environment().get_template("section-similarity.html.j2").render(s={
        "by_construction": [], "profile": None, "summary": [], "measures": [], "bootstrap": tables})
    assert "On these networks" in html and "Apart from the statistics across seeds" in html.replace("\n", " ")
    assert "cka_debiased baseline" in html and baseline in html


def test_a_study_sets_bootstrap_only_when_asked(tmp_path: Path) -> None:
    from minimascope.study.spec import CompareSpec, _compare

    arms = {name: SimpleNamespace(options={}) for name in ("sgd", "adahessian")}
    assert "bootstrap" not in _compare({"measures": ["cka"]}, arms, tmp_path).to_dict()  # earlier keys stay
    assert _compare({"bootstrap": 200}, arms, tmp_path).to_dict()["bootstrap"] == 200
    assert CompareSpec().bootstrap == 0
    for bad, words in ((1, "integer >= 2"), (True, "integer >= 2"), (-3, "integer >= 2")):
        with pytest.raises(MinimascopeError, match=words):
            _compare({"bootstrap": bad}, arms, tmp_path)
    with pytest.raises(MinimascopeError, match="needs cka or cka_debiased"):
        _compare({"bootstrap": 20, "measures": ["procrustes"]}, arms, tmp_path)
