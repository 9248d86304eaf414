"""Pure tensor math of RTO: log-probs, losses, KL, token rewards and advantages.

Tensors in, tensors out: nothing here knows about configs, models, data or trainers.
"""
