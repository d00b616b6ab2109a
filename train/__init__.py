"""Training: network, losses, pose prior (VAE), synthesis, the distributed loop, checkpoints and evaluation."""
