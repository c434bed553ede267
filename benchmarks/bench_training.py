"""Benchmarks of the toy trainer, `small` preset, CPU.

pytest-benchmark: `python -m pytest benchmarks/bench_training.py` (one RL step, one SDSD step per
loss mode, one exact enumeration of Y(x) and of the in-context teacher through the network).

Throughput table: `python benchmarks/bench_training.py [--threads 1] [--steps 30]` prints, per loss
mode (and RL, the null baseline), optimizer steps/s and tokens/s (tokens through forward passes:
sampling, student, teacher / reference, as `pcmi.training.train` counts them) and the time to
enumerate a policy exactly (all prompts, and the in-context teacher of one prompt).
"""
import copy
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
from pcmi.training.rollouts import move_table  # noqa: E402
from pcmi.training.train import negative_step, new_model, rl_step, sdsd_step  # noqa: E402

#: the loss modes of the default grid (pcmi.training.grid): name -> TrainConfig fields
MODES = {
    "full α=1": dict(loss_mode="full", alpha=1.0),
    "full α=0.5": dict(loss_mode="full", alpha=0.5),
    "full α=0": dict(loss_mode="full", alpha=0.0),
    "topk 2 student +tail": dict(loss_mode="topk", distillation_topk=2, topk_of="student", distillation_add_tail=True),
    "topk 2 teacher +tail": dict(loss_mode="topk", distillation_topk=2, topk_of="teacher", distillation_add_tail=True),
    "sampled": dict(loss_mode="sampled"),
    "sampled-baseline": dict(loss_mode="sampled-baseline"),
    "sequence": dict(loss_mode="sequence"),
}


@pytest.fixture(scope="module")
def setup():
    cfg = get_config("small")
    world = make_world(cfg)
    torch.manual_seed(0)
    model = new_model(cfg, world)
    return cfg, world, model, copy.deepcopy(model), move_table(world, "cpu")


def test_rl_step(benchmark, setup):
    cfg, world, model, ref, valid = setup
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    benchmark(rl_step, model, ref, opt, world, cfg, rng, gen, valid)


@pytest.mark.parametrize("mode", list(MODES))
def test_sdsd_step(benchmark, setup, mode):
    cfg, world, model, ref, valid = setup
    cfg = cfg.replace(**MODES[mode])
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    benchmark(sdsd_step, model, ref, opt, world, cfg, rng, gen, valid)


def test_enumerate_policy_and_teacher(benchmark, setup):
    cfg, world, model, ref, valid = setup

    def run():
        base = enumerate_model(model, world, 0)
        return model_teacher(model, world, 0, base)

    benchmark(run)


def throughput(steps: int = 30, threads: int = 1) -> list[dict]:
    """steps/s and tokens/s of `steps` optimizer steps per mode from a lightly pretrained `small` model."""
    from pcmi.training.train import run_stage
    torch.set_num_threads(threads)
    cfg = get_config("small").replace(pretrain_steps=60, threads=threads)
    world = make_world(cfg)
    torch.manual_seed(0)
    base = new_model(cfg, world)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        run_stage("pretrain", cfg, world, base, os.path.join(d, "p.pt"), 0, "cpu", progress=False)
    base.eval()
    valid = move_table(world, "cpu")
    rows = []
    runs = [("RL", "rl", {}), ("null baseline", "negative", {})] + [(m, "sdsd", kw) for m, kw in MODES.items()]
    for name, kind, kw in runs:
        c = cfg.replace(**kw)
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=c.post_lr)
        rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        tokens = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            if kind == "rl":
                _, n = rl_step(model, base, opt, world, c, rng, gen, valid)
            elif kind == "negative":
                _, n = negative_step(model, opt, world, c, rng, gen, valid)
            else:
                _, n = sdsd_step(model, base, opt, world, c, rng, gen, valid)
            tokens += n
        dt = time.perf_counter() - t0
        rows.append({"mode": name, "steps_per_s": steps / dt, "tokens_per_s": tokens / dt})
    model.eval()
    t0 = time.perf_counter()
    for i in range(len(world.laws)):
        enumerate_model(model, world, i)
    enum_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    model_teacher(model, world, 0, enumerate_model(model, world, 0))
    enum_teacher = time.perf_counter() - t0
    rows.append({"enumerate_policy_all_prompts_s": enum_all, "n_prompts": len(world.laws),
                 "enumerate_teacher_one_prompt_s": enum_teacher})
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 1
    steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 30
    rows = throughput(steps, threads)
    print(f"small preset, {steps} steps per mode, {threads} torch thread(s), {os.cpu_count()} CPU core(s), "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("| mode | steps/s | tokens/s |\n|---|---|---|")
    for r in rows[:-1]:
        print(f"| {r['mode']} | {r['steps_per_s']:.1f} | {r['tokens_per_s']:.0f} |")
    e = rows[-1]
    print(f"exact enumeration of a trained policy: {e['enumerate_policy_all_prompts_s']:.3f} s for all "
          f"{e['n_prompts']} prompts; its in-context teacher on one prompt: {e['enumerate_teacher_one_prompt_s']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
