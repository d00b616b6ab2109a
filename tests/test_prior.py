"""Pose VAE prior: training, the saved file, and its density ordering."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hand
from train.prior import PriorConfig, load_prior, main, prior_inputs, save_prior, train_prior


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prior") / "prior.pt"
    save_prior(train_prior(PriorConfig(steps=150, batch_size=64, pool_size=512, seed=1), progress=False), path)
    return path


def test_negative_elbo_is_lower_for_model_poses(vae_file: Path) -> None:
    vae = load_prior(vae_file)
    model = hand.HandModel()
    generator = torch.Generator().manual_seed(11)  # poses the prior never saw
    joints = model.keypoints(hand.sample_poses(64, generator=generator), hand.sample_shapes(64, generator=generator))
    scrambled = joints[:, torch.randperm(41, generator=generator)]
    jittered = joints + 15.0 * torch.randn(joints.shape, generator=generator)
    real = vae.negative_elbo(prior_inputs(joints))
    assert real.shape == (64,)
    assert float(real.mean()) < 0.5 * float(vae.negative_elbo(prior_inputs(scrambled)).mean())
    assert float(real.mean()) < float(vae.negative_elbo(prior_inputs(jittered)).mean())


def test_inputs_are_palm_centred_and_scaled() -> None:
    joints = torch.randn(2, 41, 3) * 50
    x = prior_inputs(joints + torch.tensor([30.0, -20.0, 10.0]))
    torch.testing.assert_close(x, prior_inputs(joints))
    torch.testing.assert_close(x.view(2, 41, 3)[:, hand.PALM_CENTER], torch.zeros(2, 3))
    torch.testing.assert_close(x.view(2, 41, 3)[:, 0], (joints[:, 0] - joints[:, hand.PALM_CENTER]) / 100)


def test_file_is_plain_and_loads_frozen(vae_file: Path) -> None:
    payload = torch.load(vae_file, weights_only=True)
    assert payload["format"] == "sphere-hand-pose-vae" and payload["config"]["latent"] == 32
    vae = load_prior(vae_file)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_prior(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        load_prior(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(ValueError, match="not a pose prior"):
        load_prior(other)


def test_load_refuses_unknown_or_mistyped_config_keys(vae_file: Path, tmp_path: Path) -> None:
    payload = torch.load(vae_file, weights_only=True)
    for key, value, expected in (("colour", 3, r"unknown config key 'colour' in pose prior file .*odd.pt"),
                                 ("latent", "32", r"config key 'latent' in pose prior file .*odd.pt: expected int")):
        odd = tmp_path / "odd.pt"
        torch.save({**payload, "config": {**payload["config"], key: value}}, odd)
        with pytest.raises(ValueError, match=expected):
            load_prior(odd)


def test_cli_writes_a_loadable_prior(tmp_path: Path) -> None:
    out = tmp_path / "cli" / "prior.pt"
    main(["--out", str(out), "--steps", "5", "--batch-size", "16", "--pool-size", "32", "--device", "cpu"])
    assert load_prior(out).cfg.num_spheres == 41
