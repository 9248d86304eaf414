"""rto: Reinforced Token Optimization (DPO meets PPO) for RLHF on Hugging Face models."""

__version__ = "0.1.0"
