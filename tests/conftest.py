import os

import pytest

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# mutation testing (docs/testing.md) runs the suite once per mutant: fewer, fixed examples
settings.register_profile("mutation", max_examples=12, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tests on tiny tensors: torch's thread pool only costs time (ms per op); one thread, restored after."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sharp_model_of():
    """make(preset, world): the preset's network at init (seed 4) with its head scaled by 40, a
    far-from-uniform law for the trainer's enumeration tests."""
    torch = pytest.importorskip("torch")
    from pcmi.training import get_config
    from pcmi.training.train import new_model

    def make(preset: str, world):
        torch.manual_seed(4)
        m = new_model(get_config(preset), world).eval()
        with torch.no_grad():
            m.head.weight.mul_(40)
        return m
    return make
