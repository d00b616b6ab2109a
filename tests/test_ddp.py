"""DDP correctness of the training step, with real torchrun processes on gloo.

The worker half of this file runs under ``torchrun --nproc_per_node=2 tests/test_ddp.py OUT``: every
rank steps a DDP model on its half of a fixed synthetic batch; rank 0 also steps a plain copy on the
whole batch. Every loss term of the synthetic path is a batch mean, so the updates must agree.
(The real-data terms use batch medians, e.g. the bone-length band, so they are not split-invariant.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_RANK = 4
STEPS = 3


def _worker(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from geometry import Crop
    from hand import HandModel
    from train.config import active_losses, load_config
    from train.distributed import get_dist_env, setup_distributed, teardown_distributed
    from train.loop import train_step
    from train.optim import lr_factor
    from train.losses import build_losses
    from train.network import build_network
    from train.synthesis import Synthesizer, held_out_batch

    torch.set_num_threads(1)
    env = get_dist_env()
    setup_distributed(env, torch.device("cpu"))
    cfg = load_config(ROOT / "configs/ci.yaml", ["data.synthetic=unused", "model.width=16"])
    hand = HandModel()
    depth, keypoints = Synthesizer(hand, crop=Crop())(held_out_batch(hand, 2 * PER_RANK, seed=9))
    losses = build_losses(active_losses(cfg), hand, crop=Crop())

    def make(optimizer_name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, object, object]:
        torch.manual_seed(0)
        net = build_network(cfg.model, crop=Crop())
        if optimizer_name == "sgd":
            optimizer = torch.optim.SGD(net.parameters(), lr=1e-5)
        else:
            optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, 100, cfg.optim))
        return net, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)

    def run(model, optimizer, scheduler, scaler, rows: slice) -> None:
        for step in range(STEPS):
            train_step(model, losses, optimizer, scheduler, scaler, synthetic=(depth[rows], keypoints[rows]),
                       real=None, step=step)

    def flat(net: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    mine = slice(env.rank * PER_RANK, (env.rank + 1) * PER_RANK)
    result: dict[str, float] = {}
    for name in ("sgd", "adam"):
        net, optimizer, scheduler, scaler = make(name)
        start = flat(net)
        run(DistributedDataParallel(net), optimizer, scheduler, scaler, mine)
        params = flat(net)
        gathered = [torch.empty_like(params) for _ in range(env.world_size)]
        dist.all_gather(gathered, params)
        if env.rank == 0:
            reference, ref_opt, ref_sched, ref_scaler = make(name)
            run(reference, ref_opt, ref_sched, ref_scaler, slice(0, 2 * PER_RANK))
            ref = flat(reference)
            result[f"{name}_rank_spread"] = float(max((g - gathered[0]).abs().max() for g in gathered))
            result[f"{name}_vs_single_max_abs"] = float((params - ref).abs().max())
            result[f"{name}_update_max_abs"] = float((ref - start).abs().max())
            result[f"{name}_relative_l2"] = float((params - ref).norm() / (ref - start).norm())
    if env.rank == 0:
        out.write_text(json.dumps(result))
    dist.barrier()  # rank 1 must not tear down while rank 0 still computes the reference
    teardown_distributed()


def test_two_ranks_match_one_rank_on_the_union_batch(tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    values = json.loads(out.read_text())
    for name in ("sgd", "adam"):
        assert values[f"{name}_rank_spread"] == 0.0, "parameters differ between ranks"
        assert values[f"{name}_update_max_abs"] > 1e-4, ("the steps changed the parameters", values)
    # SGD is linear in the gradient: the DDP average must give the single-process update.
    assert values["sgd_vs_single_max_abs"] < 1e-5 + 1e-3 * values["sgd_update_max_abs"], values
    assert values["sgd_relative_l2"] < 1e-4, str(values)
    # Adam divides by the gradient's running scale, so where a gradient is ~0 its sign (rounding) sets a
    # +-lr step: compare the whole update in L2 rather than per parameter.
    assert values["adam_relative_l2"] < 0.05, str(values)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _worker(Path(sys.argv[1]))
