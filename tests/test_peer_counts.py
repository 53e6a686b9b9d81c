"""The peers' published counts, each reproduced under its own convention (gmacs_conventions), beside dimbench's
uniform count; the exact parameter tables. Meta-device counts only."""

from __future__ import annotations

import functools
from decimal import Decimal

import pytest

import models
from dimbench.metrics import METRICS
from dimbench.paper import compare_published, tables
from dimbench.points import SweepPoint


def _point(model: str, resolution: int, metric: str) -> SweepPoint:
    return SweepPoint("t", model, resolution, resolution // 8, 1, "float32", "cpu", (metric,))


@functools.cache  # a table asks for several measures of one point
def _rows(model: str, resolution: int, metric: str) -> dict[str, float]:
    return {m.metric: m.value for m in METRICS[metric].measure(_point(model, resolution, metric))}


def _measured(model: str, resolution: int, measure: str) -> float:
    metric = {"params": "params", "params_trainable": "params", "gmacs": "flops"}.get(measure, "gmacs_conventions")
    return _rows(model, resolution, metric)[measure]


@pytest.mark.parametrize("table_id", [pytest.param("dico_counts", marks=pytest.mark.slow), "dig_counts",
                                      pytest.param("peers_official_params", marks=pytest.mark.slow)])
def test_published_peer_counts_reproduce_under_their_own_convention(table_id):
    """Every published count is reproduced within 0.2 % of its rounding interval, except DiCo-XL at 512 px, whose
    349.78 no resolution-dependent term of the released code explains (peers.md §1.5): the count gives 348.19."""
    for row in tables()[table_id].rows:
        for measure, published in row.values.items():
            gap = compare_published(_measured(row.model, row.resolution, measure), published)
            if (row.model, row.resolution) == ("dico_xl", 512):
                assert gap.difference == pytest.approx(-0.00455, abs=2e-4), gap
                continue
            assert gap.beyond_rounding <= 0.002, (row.label, measure, str(published), gap)


def test_each_convention_is_the_uniform_count_plus_or_minus_what_it_names():
    dico = _rows("dico_xl", 256, "gmacs_conventions")
    assert round(dico["gmacs_torchprofile"], 2) == 87.30 and round(_measured("dico_xl", 256, "gmacs"), 2) == 87.22
    dig = METRICS["gmacs_conventions"].measure(_point("dig_xl_2", 256, "gmacs_conventions"))
    fused = next(m for m in dig if m.metric == "gmacs_fvcore_fused")
    e = fused.extra
    assert e["mlp_down_proj_gmacs"] == pytest.approx(28 * 256 * 3072 * 1152 / 1e9)  # every block's down-projection
    assert e["custom_kernel_gmacs"] == pytest.approx(28 * 2 * 18 * 256 * 32 * 64 / 1e9)  # the GLA core
    assert e["layer_norm_elements"] == (2 * 28 + 1) * 256 * 1152 and e["layer_norm_affine_elements"] == 0
    assert fused.value == pytest.approx(e["gmacs_uniform"] - e["mlp_down_proj_gmacs"] - e["custom_kernel_gmacs"]
                                        + 4 * e["layer_norm_elements"] / 1e9)
    assert round(e["gmacs_uniform"], 2) == 115.19  # dimbench's count: on par with DiT-XL/2, not 77 % of it
    assert "fvcore" in fused.method and "meta-device" in fused.method


def test_peer_tables_name_registered_models_and_their_conventions():
    registered = set(models.list_models())
    for tid in ("dico_counts", "dig_counts", "peers_official_params", "dico_throughput", "dico_fid"):
        table = tables()[tid]
        assert all(r.model in registered for r in table.rows) and table.convention
    assert tables()["dico_throughput"].batch == 64 and tables()["dico_throughput"].device == "cuda"
    assert "TF32" in tables()["dico_throughput"].source.note
    assert tables()["dico_counts"].rows[3].values["gmacs_torchprofile"] == Decimal("87.30")


def test_tf32_is_pinned_off_for_matmuls_and_convolutions_together():
    """torch's defaults differ (cuDNN TF32 on, matmul off): a CUDA point turns both off, and says so."""
    import warnings

    import torch

    from dimbench.environment import tf32
    from dimbench.metrics import common

    before = tf32()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
            common.pin_tf32()
            assert not tf32()["cudnn_allow_tf32"] and not tf32()["cuda_matmul_allow_tf32"]
        finally:
            torch.backends.cudnn.allow_tf32 = before["cudnn_allow_tf32"]
            torch.backends.cuda.matmul.allow_tf32 = before["cuda_matmul_allow_tf32"]
    assert "matmuls and cuDNN convolutions" in common.TF32_PINNED


def test_peers_scaling_suite_plans_as_documented():
    from conftest import ROOT
    from dimbench.suite import expand, load_suite

    suite = load_suite(ROOT / "suites" / "peers_scaling.yaml")
    plan = expand(suite, device="cpu", out="unused")
    assert len(plan.points) == 24
    assert {pp.point.model for pp in plan.points} == {"dim_h_2", "dit_xl_2", "uvit_h_2", "dico_xl", "dig_xl_2",
                                                      "sana_xl_2_cc"}
    # Timed under a budget of 320 GMACs per pass: every model at 256 px, nothing above (DiCo-XL's 348 at 512).
    assert all(pp.budget == {"latency": 320.0} and "train_step" in pp.skipped for pp in plan.points)
    assert all({"params", "flops", "memory"} <= set(pp.run) for pp in plan.points)
    assert {pp.point.resolution for pp in plan.points if "gmacs_conventions" in pp.run} == {256, 512}
    cuda = suite.sections["cuda"]
    assert sum(len(cuda.at(cuda.batch_sizes, r)) * len(cuda.at(cuda.dtypes, r)) for r in cuda.resolutions) == 10
