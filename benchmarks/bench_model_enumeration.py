"""Exact enumeration of Y(x) through the network, with and without the KV cache (CPU).

pytest-benchmark: `python -m pytest benchmarks/bench_model_enumeration.py` (one prompt of the `small`
and `gpu` presets' worlds and networks at init, cached and uncached).

`python benchmarks/bench_model_enumeration.py [--threads 1] [--repeat 3]` prints, per preset, the best
time of enumerate_model over the prompts with kv_cache=False (one full forward over context ‖ moves
per prefix per level: O(depth²) token work) and kv_cache=True (the context once, then one token per
prefix per level), the ratio, and the largest |Δ log π(y)| between the two, in one run; and the same for
the in-context teacher of prompt 0 (one enumeration per correct demonstration, a longer context).

Measured 2026-12-01, 2-core Intel Xeon (shared, load average ≈ 2), torch 2.13 CPU, --threads 1 --repeat 5
(networks at init; best of 5, seconds):

    preset  what               uncached  cached  ratio  max |Δ log π| (float32)
    tiny    all prompts           0.027   0.022   1.19  4.5e-08
    small   all prompts           0.102   0.080   1.27  2.3e-07
    small   teacher, prompt 0     0.125   0.113   1.11  1.8e-07
    gpu     all prompts           1.720   0.971   1.77  1.5e-06
    gpu     teacher, prompt 0     4.088   1.736   2.35  1.9e-06

At tiny/small sizes the enumeration's Python bookkeeping dominates; the saving grows with width,
depth and context length (the gpu preset's network, and the teacher's longer context).

`python benchmarks/bench_model_enumeration.py --teacher [--threads 1] [--repeat 3]` times model_teacher on
prompt 0 of the small and gpu presets: batched=False (one cached enumeration per correct demonstration)
against batched=True (every demonstration's context in one enumeration, B·n (context, prefix) rows per
forward, each context's rows then replayed through graphworld's enumeration), and the largest
|Δ log T(y | y')| between the two (float32). Measured 2026-12-02, 2-core Intel Xeon (shared, load average
0.66 before / 0.73 after), torch 2.13 CPU, --threads 1 --repeat 3 (best of 3, seconds):

    preset  demos  rollouts  per-demo  batched  ratio  max |Δ log T| (float32)
    small      12        46     0.176    0.097   1.82  2.3e-07
    gpu        36       125     1.713    1.269   1.35  1.7e-06

(float32 rows differ at rounding level because the BLAS kernel depends on the batch's row count; in
float64 tests/test_training_kvcache.py requires them equal to 1e-12.)
"""
import os
import platform
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pcmi.training import get_config  # noqa: E402
from pcmi.training.data import make_world  # noqa: E402
from pcmi.training.evaluate import enumerate_model, model_teacher  # noqa: E402
from pcmi.training.train import new_model  # noqa: E402

PRESETS = ("tiny", "small", "gpu")


def setup(preset: str):
    cfg = get_config(preset)
    world = make_world(cfg)
    torch.manual_seed(0)
    return world, new_model(cfg, world).eval()


def enumerate_all(model, world, kv_cache: bool) -> list:
    """enumerate_model on every prompt of the world; the log π(y) arrays."""
    return [enumerate_model(model, world, i, kv_cache=kv_cache).log_prob for i in range(len(world.laws))]


def enumerate_teacher(model, world, kv_cache: bool, demos) -> list:
    """The in-context teacher's rows of prompt 0 (model_teacher's enumerations): one per demonstration."""
    return [enumerate_model(model, world, 0, demo=d, kv_cache=kv_cache).log_prob for d in demos]


def teacher_rows(model, world, batched: bool, base) -> np.ndarray:
    """model_teacher's rows on prompt 0, batched over the demonstrations or one enumeration each."""
    return model_teacher(model, world, 0, base, batched=batched).log_T


@pytest.fixture(scope="module", params=["small", "gpu"])
def preset(request):
    return request.param, *setup(request.param)


@pytest.mark.parametrize("kv_cache", [True, False], ids=["cached", "uncached"])
def test_enumerate_one_prompt(benchmark, preset, kv_cache):
    _, world, model = preset
    ro = benchmark(enumerate_model, model, world, 0, kv_cache=kv_cache)
    assert abs(np.exp(ro.log_prob).sum() - 1) < 1e-4


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-demo"])
def test_model_teacher_prompt_0(benchmark, preset, batched):
    _, world, model = preset
    base = enumerate_model(model, world, 0)
    T = benchmark(teacher_rows, model, world, batched, base)
    assert T.shape == (len(base), len(base))


def best_time(f, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main_teacher(repeat: int) -> None:
    """model_teacher on prompt 0, per-demonstration against batched, small and gpu presets."""
    print(f"{'preset':<7} {'demos':>5} {'rollouts':>8} {'per-demo s':>10} {'batched s':>9} {'ratio':>6} "
          f"{'max |Δ log T|':>14}")
    for name in ("small", "gpu"):
        world, model = setup(name)
        base = enumerate_model(model, world, 0)
        ref, new = teacher_rows(model, world, False, base), teacher_rows(model, world, True, base)
        t_off = best_time(lambda: teacher_rows(model, world, False, base), repeat)
        t_on = best_time(lambda: teacher_rows(model, world, True, base), repeat)
        print(f"{name:<7} {int(base.reward.sum()):>5} {len(base):>8} {t_off:>10.3f} {t_on:>9.3f} {t_off / t_on:>6.2f} "
              f"{float(np.abs(ref - new).max()):>14.2e}")


def main(argv) -> None:
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else torch.get_num_threads()
    repeat = int(argv[argv.index("--repeat") + 1]) if "--repeat" in argv else 3
    torch.set_num_threads(threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{threads} threads, load average {os.getloadavg()[0]:.2f}")
    if "--teacher" in argv:
        main_teacher(repeat)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
    print(f"{'preset':<7} {'what':<18} {'enums':>5} {'rollouts':>8} {'uncached s':>10} {'cached s':>9} {'ratio':>6} "
          f"{'max |Δ log π|':>14}")
    for name in PRESETS:
        world, model = setup(name)
        base = enumerate_model(model, world, 0)
        demos = [base.paths[j] for j in np.flatnonzero(base.reward == 1)]
        for what, f in (("all prompts", lambda kv: enumerate_all(model, world, kv)),
                        ("teacher, prompt 0", lambda kv: enumerate_teacher(model, world, kv, demos))):
            ref, new = f(False), f(True)
            gap = max(float(np.abs(a - b).max()) for a, b in zip(ref, new))
            t_off, t_on = best_time(lambda: f(False), repeat), best_time(lambda: f(True), repeat)
            print(f"{name:<7} {what:<18} {len(ref):>5} {sum(len(a) for a in ref):>8} {t_off:>10.3f} {t_on:>9.3f} "
                  f"{t_off / t_on:>6.2f} {gap:>14.2e}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
