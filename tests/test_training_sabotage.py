"""Sabotage harness for the toy trainer: each entry breaks the trainer the way a plausible bug would
(a one-line source patch); the training tests must catch every one.

    python tests/test_training_sabotage.py            # all sabotages (~5–10 min on 2 cores)
    python tests/test_training_sabotage.py NAME ...   # some of them

Each sabotage is applied to a copy of the repository in a temporary folder, and the training tests
run there (`pytest -x`, unit-test files first); a sabotage is caught when they fail. In CI only
`test_every_sabotage_still_applies` runs: it keeps the patches in step with the source.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TR = "pcmi/training/"
TEST_FILES = ["tests/test_training_losses.py", "tests/test_training_loss_modes.py", "tests/test_training_train.py",
              "tests/test_training_evaluate.py", "tests/test_training.py"]

# name: (file, original text, sabotaged text)
SABOTAGES = {
    "rl_kl_sign": (TR + "train.py", "return (reward - beta * (logp - logp_ref)).detach()",
                   "return (reward + beta * (logp - logp_ref)).detach()"),
    "rl_no_kl": (TR + "train.py", "return (reward - beta * (logp - logp_ref)).detach()",
                 "return (reward + 0 * (logp - logp_ref)).detach()"),
    "rl_reference_is_policy": (TR + "train.py",
                               "logp_ref = sequence_logprob(completion_logits(ref_model, ctx, ro.tokens)",
                               "logp_ref = sequence_logprob(completion_logits(model, ctx, ro.tokens)"),
    "rl_no_baseline": (TR + "train.py", "adv = R - R.mean(dim=1, keepdim=True)", "adv = R + 0"),
    "rl_batch_mean_baseline": (TR + "train.py", "adv = R - R.mean(dim=1, keepdim=True)", "adv = R - R.mean()"),
    # the teacher is detached inside per_token_loss (train.py's no_grad and .detach() are extra guards)
    "sdsd_teacher_gradient_no_detach": (TR + "losses.py",
                                        "    t_floored = _floored(teacher_logits.detach()).to(log_s.dtype)",
                                        "    t_floored = _floored(teacher_logits).to(log_s.dtype)"),
    "sdsd_student_teacher_swapped": (TR + "train.py", "per_token_loss(s_logits, t_logits.detach(), ro.tokens, mode)",
                                     "per_token_loss(t_logits.detach(), s_logits, ro.tokens, mode)"),
    "sdsd_padding_in_loss": (TR + "train.py", "sequence_mean_then_batch_mean(per_tok, ro.mask, has_demo.float())",
                             "sequence_mean_then_batch_mean(per_tok, torch.ones_like(ro.mask), has_demo.float())"),
    "logprob_padding_counted": (TR + "rollouts.py", "return (lp * mask).sum(-1)", "return lp.sum(-1)"),
    "reduction_padding_counted": (TR + "losses.py", "per_row = (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)",
                                  "per_row = per_token.mean(-1)"),
    "sdsd_teacher_without_demo": (TR + "train.py",
                                  "return prompt_ids(world, ro.prompt.tolist(), demos, device=ro.tokens.device)",
                                  "return prompt_ids(world, ro.prompt.tolist(), None, device=ro.tokens.device)"),
    # model_teacher's default path: every demonstration's context in one batched enumeration
    "eval_teacher_without_demo": (TR + "evaluate.py",
                                  "self.ctx = prompt_ids(world, [prompt] * len(demos), demos, device=device)",
                                  "self.ctx = prompt_ids(world, [prompt] * len(demos), None, device=device)"),
    "ema_inverted": (TR + "train.py", "pt.mul_(1 - rate).add_(p, alpha=rate)", "pt.mul_(rate).add_(p, alpha=1 - rate)"),
    "rl_closed_form_beta_1": (TR + "evaluate.py", "pcmi.rl_optimum(base.log_prob, base.reward, beta)",
                              "pcmi.rl_optimum(base.log_prob, base.reward, 1.0)"),
    "run_passes_beta_1": (TR + "run.py", "evaluate_prompt(models, world, i, cfg.beta,", "evaluate_prompt(models, world, i, 1.0,"),
    "fixed_point_one_round": (TR + "evaluate.py", "def sdsd_onpolicy_fixed_point(inst, rounds: int = 500,",
                              "def sdsd_onpolicy_fixed_point(inst, rounds: int = 1,"),
    "theory_check_inverted": (TR + "run.py", "if not (d[f\"tv_{own}\"] < d[f\"tv_{other}\"] and d[f\"tv_{own}\"] < d[\"tv_base\"]):",
                              "if (d[f\"tv_{own}\"] < d[f\"tv_{other}\"] and d[f\"tv_{own}\"] < d[\"tv_base\"]):"),
    "resume_without_rng_restore": (TR + "train.py", "        gen.set_state(ck[\"torch_rng\"])\n        rng.bit_generator.state = ck[\"np_rng\"]\n",
                                   ""),
    "reverse_kl_is_forward": (TR + "losses.py", "    if alpha == 1.0:\n        return _kl(log_s, log_t)",
                              "    if alpha == 1.0:\n        return _kl(log_t, log_s)"),
    "rl_std_scaling_always": (TR + "train.py", "    if scale_by_std:\n        adv = adv /", "    if True:\n        adv = adv /"),
    "pretrain_on_prompt_tokens": (TR + "data.py", "mask[b, c - 1:len(row) - 1] = True", "mask[b, :len(row) - 1] = True"),
    "demo_may_be_self": (TR + "train.py", "cands = ok[ok != g]", "cands = ok"),
    "negative_baseline_rewards_failures": (TR + "train.py", "torch.full_like(reward, -penalty))",
                                           "torch.full_like(reward, penalty))"),
}


def _copy_repo(dst: str) -> None:
    for d in ("pcmi", "graphworld", "tests"):
        shutil.copytree(os.path.join(ROOT, d), os.path.join(dst, d), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), dst)


def _apply(dst: str, name: str) -> None:
    path, old, new = SABOTAGES[name]
    with open(os.path.join(dst, path)) as f:
        src = f.read()
    assert src.count(old) == 1, f"{name}: the patched text is not unique in {path}"
    with open(os.path.join(dst, path), "w") as f:
        f.write(src.replace(old, new))


def run_tests(dst: str) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=dst, PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", "-p", "no:cacheprovider",
                        *TEST_FILES], cwd=dst, env=env, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("FAILED") or ln.startswith("ERROR")]
    return p.returncode, (lines[0] if lines else p.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main(names) -> int:
    names = names or list(SABOTAGES)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        clean = os.path.join(tmp, "clean")
        _copy_repo(clean)
        rc, msg, dt = run_tests(clean)
        print(f"unsabotaged: rc={rc} ({dt:.0f} s) {msg}", flush=True)
        if rc != 0:
            return 1
        for name in names:
            dst = os.path.join(tmp, name)
            _copy_repo(dst)
            _apply(dst, name)
            rc, msg, dt = run_tests(dst)
            caught = rc == 1
            results.append(caught)
            print(f"{'CAUGHT ' if caught else 'MISSED '} {name:<34} rc={rc} {dt:5.0f} s  {msg}", flush=True)
            shutil.rmtree(dst)
    print(f"{sum(results)}/{len(results)} sabotages caught")
    return 0 if all(results) else 1


def test_every_sabotage_still_applies():
    """Each patch matches the current source exactly once (so the harness tests the real code)."""
    for name, (path, old, new) in SABOTAGES.items():
        with open(os.path.join(ROOT, path)) as f:
            assert f.read().count(old) == 1, name
        assert old != new, name


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
