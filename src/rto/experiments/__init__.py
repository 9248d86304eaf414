"""`rto experiment <name>`: the paper's claims at small scale, on the demo's controlled-sentiment task.

data-scaling   RM and DPO on 1/16 .. 1 of the preference pairs; PPO and RTO on each (equal rollout budgets)
variants       PPO, RTO, Semi-RTO, DDPO, RS-PPO, DPO-only, REINFORCE++, RTO+REINFORCE++, offline DPO, SFT
sweep          beta1 x beta2 x beta3 (one plane per pair through the default point) and dpo_reward_clip
token-sources  the token reward of RTO from DPO, IPO, SimPO, R-DPO and TDPO models

Each is a set of cached cells (rto.experiments.cells) over one shared world (rto.experiments.core), so a
run interrupted at any point continues where it stopped. docs/experiments.md has the commands and results.
"""

from rto.experiments.run import PRESETS, ExperimentConfig, run_experiment

__all__ = ["ExperimentConfig", "PRESETS", "run_experiment"]
