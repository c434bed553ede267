"""The torch route-copying SDSD optimum equals pcmi.policies.sdsd_optimum (CPU here; CUDA when present)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")
import torch  # noqa: E402

from pcmi import PcmiInputError  # noqa: E402
from pcmi import torch_exact  # noqa: E402
from pcmi.instance import Instance, demos_from_successes  # noqa: E402
from pcmi.policies import sdsd_optimum  # noqa: E402
from pcmi.teachers import LatentStrategyTeacher  # noqa: E402
from pcmi.testing import extreme_instances, route_copying_instances  # noqa: E402


def agrees_with_numpy(inst, device="cpu", tol=1e-12) -> bool:
    """Same −inf pattern and log π_SD to tol (relative to max(1, |value|)); both refuse alike."""
    try:
        want = sdsd_optimum(inst)
    except PcmiInputError:
        with pytest.raises(PcmiInputError):
            torch_exact.sdsd_optimum_on_device(inst, device)
        return True
    got = torch_exact.sdsd_optimum_on_device(inst, device)
    m = np.isfinite(want)
    return bool(np.array_equal(np.isfinite(got), m)
                and np.all(np.abs(got[m] - want[m]) <= tol * np.maximum(1.0, np.abs(want[m]))))


@given(st.one_of(route_copying_instances(all_correct=False), extreme_instances(kinds=("route_copying",), trees=False)))
def test_torch_optimum_equals_numpy(inst):
    assert agrees_with_numpy(inst)


@given(route_copying_instances(all_correct=False), st.integers(1, 4))
def test_chunks_do_not_change_the_result(inst, chunk):
    whole = torch_exact.sdsd_optimum_on_device(inst, "cpu")
    old = torch_exact.CHUNK
    try:
        torch_exact.CHUNK = chunk
        assert np.array_equal(torch_exact.sdsd_optimum_on_device(inst, "cpu"), whole)
    finally:
        torch_exact.CHUNK = old


def _tiny_strategy():
    """Strategy 1 holds π0 mass ~1e-330 and is the only correct one (D = the one rollout in it): exp of
    its log-mass underflows unless shifted by its own maximum."""
    lb = np.array([np.log(0.5), np.log(0.5), np.log(1e-300) - 69.0])
    t = LatentStrategyTeacher.route_copying(lb, np.array([0, 0, 1]), 0.1)
    r = np.array([0, 0, 1])
    return Instance(t.log_base, r, t, demos_from_successes(t.log_base, r))


def test_a_1e330_strategy_is_kept():
    assert agrees_with_numpy(_tiny_strategy())


def test_sabotage_unshifted_group_sums_are_caught(monkeypatch):
    def unshifted(torch, values, groups, K, device):
        v, g = torch.as_tensor(values, device=device), torch.as_tensor(groups, device=device)
        return torch.log(torch.zeros(K, dtype=torch.float64, device=device).scatter_add(0, g, torch.exp(v)))
    monkeypatch.setattr(torch_exact, "_group_logsumexp", unshifted)
    with np.errstate(invalid="ignore"):  # the sabotage's +inf tilt
        assert not agrees_with_numpy(_tiny_strategy())


@pytest.mark.parametrize("call, words", [
    (lambda: torch_exact.route_copying_sdsd_optimum([0.0], [0, 1], [0.0], 0.1), "one length"),
    (lambda: torch_exact.route_copying_sdsd_optimum([0.0], [-1], [0.0], 0.1), "strategy index"),
    (lambda: torch_exact.route_copying_sdsd_optimum([0.0], [0], [0.0], 2.0), "eps must lie"),
    (lambda: torch_exact.route_copying_sdsd_optimum([0.0], [0], [0.0], "x"), "eps must be a number"),
    (lambda: torch_exact.route_copying_sdsd_optimum([float("nan")], [0], [0.0], 0.1), "NaN"),
    (lambda: torch_exact.route_copying_sdsd_optimum([0.0, -np.inf], [0, -1], [-np.inf, 0.0], 0.1), "zero base"),
    (lambda: torch_exact.route_copying_sdsd_optimum([0.0], [0], [-1.0], 0.1), "not normalized"),
])
def test_bad_input_is_one_line(call, words):
    with pytest.raises(PcmiInputError, match=words) as e:
        call()
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@given(route_copying_instances(all_correct=False))
def test_cuda_equals_numpy(inst):
    assert agrees_with_numpy(inst, "cuda")
