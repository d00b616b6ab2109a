"""Pose prior (VAE): a small VAE over the 41 sphere centres of model hands (palm-centred, joints / 100).

Trained from the hand model's joint-angle sampler (``hand.sample_poses``) and shape sampler
(``hand.sample_shapes``) through forward kinematics (``hand.HandModel.keypoints``); used frozen by the
``prior`` loss term, whose value is the VAE's negative ELBO of the predicted joints.

Train one (minutes on a CPU, seconds on a GPU)::

    python -m train.prior --out prior.pt [--steps 5000] [--seed 0] [--device cuda]

The file is a dict of tensors and plain values (``torch.load(path, weights_only=True)``):
``{"format", "version", "config": PriorConfig fields, "state_dict", "final_loss"}``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from fileio import write_atomic
from hand import HandModel, sample_poses, sample_shapes
from train.schema import from_dict

FORMAT = "sphere-hand-pose-vae"
VERSION = 1
PALM_CENTER = 32  # hand.PALM_CENTER; repeated so loading a prior does not import the hand model
SCALE_MM = 100.0


@dataclass
class PriorConfig:
    """Pose VAE size and training settings."""

    num_spheres: int = 41  # joints per pose (the VAE input is num_spheres * 3)
    latent: int = 32  # latent dimensions (the reference uses 32)
    hidden: int = 256  # width of the two hidden layers of encoder and decoder
    recon_sigma: float = 0.05  # std of the Gaussian likelihood in joints / 100 units (0.05 = 5 mm)
    steps: int = 5000  # optimisation steps
    batch_size: int = 256  # poses per step, drawn from the pool
    pool_size: int = 16384  # model poses sampled once before training (forward kinematics is the slow part)
    lr: float = 1e-3  # Adam learning rate
    shape_spread: float = 0.08  # spread of hand.sample_shapes (hand sizes the prior accepts)
    seed: int = 0  # seed of the pose and shape samplers and of the initial weights


def prior_inputs(joints: torch.Tensor, palm: int = PALM_CENTER) -> torch.Tensor:
    """(N, J, 3) crop-frame mm -> (N, J * 3) palm-centred joints / 100, the VAE's input."""
    return ((joints - joints[:, palm:palm + 1]) / SCALE_MM).flatten(1)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.GroupNorm(math.gcd(16, b), b), nn.ReLU()]
    return nn.Sequential(*layers)


class PoseVAE(nn.Module):
    """Gaussian-encoder, Gaussian-likelihood VAE on flattened joints (see :class:`PriorConfig`)."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.num_spheres * 3
        self.encoder = _mlp([dim, cfg.hidden, cfg.hidden])
        self.encoder.append(nn.ReLU())
        self.mean = nn.Linear(cfg.hidden, cfg.latent)
        self.log_var = nn.Linear(cfg.hidden, cfg.latent)
        self.decoder = _mlp([cfg.latent, cfg.hidden, cfg.hidden, dim])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(x)
        return self.mean(hidden), self.log_var(hidden).clamp(-20.0, 10.0)

    def negative_elbo(self, x: torch.Tensor, *, sample: bool = False) -> torch.Tensor:
        """(N, J * 3) -> (N,) negative ELBO in nats, up to the likelihood's constant.

        ``sample=False`` decodes the posterior mean (deterministic, used as a loss); ``sample=True``
        draws one reparameterised latent (training).
        """
        mean, log_var = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if sample else mean
        reconstruction = self.decoder(z)
        nll = 0.5 * ((x - reconstruction) ** 2).sum(dim=-1) / self.cfg.recon_sigma ** 2
        kl = 0.5 * (mean ** 2 + log_var.exp() - 1.0 - log_var).sum(dim=-1)
        return nll + kl


def sample_training_joints(hand: nn.Module, count: int, generator: torch.Generator,
                           shape_spread: float) -> torch.Tensor:
    """Model joints (count, 41, 3) of random poses and shapes from the hand model's samplers."""
    poses = sample_poses(count, generator=generator)
    shapes = sample_shapes(count, generator=generator, spread=shape_spread)
    device = hand.radii.device
    with torch.no_grad():
        return hand.keypoints(poses.to(device), shapes.to(device))


def train_prior(cfg: PriorConfig, *, device: str | torch.device = "cpu", progress: bool = True) -> PoseVAE:
    """Train a pose VAE from the hand model's samplers; returns it in eval mode."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    hand = HandModel().to(device)
    chunks = [sample_training_joints(hand, min(1024, cfg.pool_size - start), generator, cfg.shape_spread)
              for start in range(0, cfg.pool_size, 1024)]
    pool = prior_inputs(torch.cat(chunks))
    vae = PoseVAE(cfg).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    bar = tqdm(range(cfg.steps), desc="pose prior", disable=not progress, dynamic_ncols=True)
    for step in bar:
        x = pool[torch.randint(len(pool), (cfg.batch_size,), generator=generator).to(pool.device)]
        loss = vae.negative_elbo(x, sample=True).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            bar.set_postfix(neg_elbo=f"{loss.item():.2f}")
    vae.final_loss = float(loss.item()) if cfg.steps else float("nan")
    return vae.eval()


def save_prior(vae: PoseVAE, path: str | Path) -> None:
    """Write the VAE as a dict of tensors and plain values (loadable with weights_only=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "config": asdict(vae.cfg),
               "state_dict": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
               "final_loss": float(getattr(vae, "final_loss", float("nan")))}
    write_atomic(path, lambda handle: torch.save(payload, handle))


def check_prior_file(path: str | Path | None) -> Path:
    """The pose prior file the ``prior`` loss term needs: given, and a file (the one check of it).

    Raises ValueError when no path is given and FileNotFoundError when it is not a file; both messages
    name the config key ``loss.prior_path`` and say how to train a prior.
    """
    if not path:
        raise ValueError("'loss.prior_path' is required while 'loss.prior.enabled' is true: train a pose prior "
                         "(VAE) with `python -m train.prior --out prior.pt` and set loss.prior_path to it, or set "
                         "loss.prior.enabled=false")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"'loss.prior_path': pose prior file {path} does not exist (train one with "
                                f"`python -m train.prior --out {path}`)")
    return path


class PriorFileError(ValueError):
    """A pose prior file that cannot be used: unreadable (a pickle, truncated) or not a prior's."""


def load_prior(path: str | Path | None, device: str | torch.device = "cpu") -> PoseVAE:
    """A frozen pose VAE (eval mode, no gradients to its weights) from a file of :func:`save_prior`; raises
    PriorFileError naming the file."""
    path = check_prior_file(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing here
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PriorFileError(f"pose prior file {path} could not be read with weights_only=True: {first_line}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PriorFileError(f"{path} is not a pose prior file (missing format {FORMAT!r})")
    try:  # ConfigError names the file and the unknown or mistyped key
        vae = PoseVAE(from_dict(PriorConfig, payload.get("config"), where=f" in pose prior file {path}"))
        vae.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, KeyError) as error:
        raise PriorFileError(f"pose prior file {path}: {str(error).strip().splitlines()[0]}") from None
    return vae.to(device).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.prior", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output file, e.g. prior.pt")
    parser.add_argument("--steps", type=int, default=PriorConfig.steps, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=PriorConfig.batch_size, help="poses per step")
    parser.add_argument("--pool-size", type=int, default=PriorConfig.pool_size, help="model poses sampled")
    parser.add_argument("--seed", type=int, default=PriorConfig.seed, help="sampler and weight seed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available)")
    args = parser.parse_args(argv)
    cfg = PriorConfig(steps=args.steps, batch_size=args.batch_size, pool_size=args.pool_size, seed=args.seed)
    vae = train_prior(cfg, device=args.device)
    save_prior(vae, args.out)
    print(f"wrote {args.out} (final negative ELBO {vae.final_loss:.2f} nats per pose)")


if __name__ == "__main__":
    main()
