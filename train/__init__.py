"""Training: network, losses, pose prior, synthesis, the distributed loop, checkpoints and evaluation."""
