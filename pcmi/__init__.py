"""pcmi: on-policy self-distillation made computable.

Exact theory (no torch): teachers, PCMI, optimal policies, dynamics, metrics, propositions.
The toy trainer lives in `pcmi.training` and is the only part that imports torch.
"""
from .distributions import entropy, kl, log_normalize, prob_of, probs, total_variation
from .dynamics import forward_kl_rounds, rl_rounds, sdsd_rounds
from .errors import PcmiInputError
from .graph_instance import graph_instance, make_teacher
from .instance import Instance, demos_from_successes, uniform_correct_demos
from .metrics import (correct_entropy, effective_correct, expected_distinct_correct, ood_pass_at_k,
                      ood_success, pass_at_k, pass_at_k_unbiased, policy_metrics, ratio_distortion,
                      strategy_mass_entropy, strategy_masses, success)
from .policies import (contrastive_optimum, contrastive_score, js_kkt_residual, forward_kl_optimum, forward_kl_token_optimum, js_divergence,
                       js_optimum, rl_beta_for_mean_success, rl_beta_for_success, rl_limit, rl_optimum,
                       rl_success, sdsd_optimum, sdsd_sequence_from_tokens, sdsd_token_optimum,
                       soft_future_value, token_level)
from .scores import expected_pcmi, pcmi_matrix
from .teachers import CopyTeacher, KernelTeacher, LatentStrategyTeacher

__version__ = "0.1.0"
