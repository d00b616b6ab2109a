"""The training reader: no pickle, equal batches on every rank, every sample once when not resampled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from shards.format import ShardsError, npy_bytes, write_tar
from shards.reader import EpochResampledShards, get_rank_world, list_shards, make_loader, split_by_rank

REPO = Path(__file__).resolve().parents[1]


def sample_ids(loader) -> list[float]:
    """One id per sample read: the synthetic samples' pose[6] (a random translation, distinct per sample)."""
    return [float(v) for batch in loader for v in batch["pose"][:, 6]]


@pytest.mark.parametrize("entry", ["extra.pyd", "extra.pickle", "extra.bin"])
def test_reader_refuses_pickle_and_unknown_entries(tmp_path, entry):
    write_tar(tmp_path / "shard-000000.tar", [("000001", {"pose.npy": npy_bytes(np.zeros(26, np.float32)),
                                                          entry: b"\x80\x04K\x01."})])
    loader = make_loader(tmp_path, batch_size=1, batches_per_epoch=None, num_workers=0, resampled=False)
    with pytest.raises(ShardsError, match=f"000001.{entry}"):
        list(loader)


def test_pickled_npy_is_refused(tmp_path):
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    write_tar(tmp_path / "shard-000000.tar", [("000001", {"pose.npy": buffer.getvalue()})])
    with pytest.raises(ValueError, match="pickle"):
        list(make_loader(tmp_path, batch_size=1, batches_per_epoch=None, num_workers=0, resampled=False))


def test_every_rank_gets_the_same_number_of_full_batches(synthetic_shards):
    # 4 shards, 3 ranks x 2 workers = 6 readers: fewer shards than readers.
    firsts = []
    for rank in range(3):
        loader = make_loader(synthetic_shards, batch_size=4, batches_per_epoch=7, num_workers=2, seed=1,
                             rank=rank, world_size=3)
        for epoch in range(2):
            batches = list(loader)
            assert len(batches) == 7 == len(loader), (rank, epoch)
            assert all(b["pose"].shape == (4, 26) for b in batches)
            if epoch == 0:
                firsts.append(batches[0]["pose"].numpy())
    assert not np.array_equal(firsts[0], firsts[1]), "ranks should read different samples"


def test_epochs_differ_and_runs_repeat(synthetic_shards):
    def epochs():
        loader = make_loader(synthetic_shards, batch_size=4, batches_per_epoch=3, num_workers=1, seed=2)
        return [np.concatenate([b["pose"].numpy() for b in loader]) for _ in range(2)]

    first, second = epochs(), epochs()
    assert not np.array_equal(first[0], first[1])
    np.testing.assert_array_equal(first[0], second[0])


def test_not_resampled_reads_each_sample_once(synthetic_shards, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    loader = make_loader(synthetic_shards, batch_size=16, batches_per_epoch=None, num_workers=2, resampled=False)
    poses = np.concatenate([b["pose"].numpy() for b in loader])
    assert len(poses) == 40 and len(np.unique(poses[:, 6])) == 40


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ShardsError, match="no shard"):
        make_loader(tmp_path, batch_size=1, batches_per_epoch=1)


def test_exported_rank_variables_alone_do_not_split(synthetic_shards, monkeypatch):
    # `python -m train.evaluate` in a torchrun/SLURM shell: no process group, so every sample is read.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert get_rank_world() == (0, 1)
    loader = make_loader(synthetic_shards, batch_size=16, batches_per_epoch=None, num_workers=0, resampled=False)
    assert len(set(sample_ids(loader))) == 40


def test_not_resampled_ranks_partition_the_samples(synthetic_shards):
    # 4 shards over 3 ranks x 2 workers: uneven shares, yet each sample exactly once across ranks.
    shares = [sample_ids(make_loader(synthetic_shards, batch_size=3, batches_per_epoch=None, num_workers=2,
                                     resampled=False, rank=rank, world_size=3)) for rank in range(3)]
    assert sorted(len(share) for share in shares) == [10, 10, 20]
    union = [i for share in shares for i in share]
    assert len(union) == len(set(union)) == 40


RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from shards.reader import make_loader

    rank, world, store, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    loader = make_loader(source, batch_size=8, batches_per_epoch=None, num_workers=0, resampled=False)
    print(json.dumps([float(v) for b in loader for v in b["pose"][:, 6]]))
    dist.destroy_process_group()
""")


def test_not_resampled_splits_by_an_initialised_process_group(synthetic_shards, tmp_path):
    # Real ranks (gloo, as train.monitor's distributed evaluation): the default split is the group's.
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1"}  # misleading variables must not matter
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), "2", str(tmp_path / "store"),
                               str(synthetic_shards)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    shares = []
    for process in ranks:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
        shares.append(json.loads(out.strip().splitlines()[-1]))
    assert [len(share) for share in shares] == [20, 20]
    assert not set(shares[0]) & set(shares[1]) and len(set(shares[0]) | set(shares[1])) == 40


def test_resampled_ranks_take_disjoint_draws_of_one_shard_stream(synthetic_shards):
    # Resampled shards are drawn with replacement (so every rank gets its batches even with fewer shards
    # than readers): ranks cannot own disjoint shard subsets. What holds instead: every rank sees the
    # same (seed, epoch) stream and takes every world-th draw, so within an epoch the ranks' draws
    # partition that one stream (no draw read twice, none skipped), and another epoch draws anew.
    urls = list_shards(synthetic_shards, None)
    world, per_rank = 3, 30

    def draws(rank: int, epoch: int) -> list[str]:
        stream = EpochResampledShards(urls, seed=4)
        stream.epoch = epoch
        return [d["url"] for d in islice(split_by_rank(rank, world)(iter(stream)), per_rank)]

    stream = EpochResampledShards(urls, seed=4)
    shared = [d["url"] for d in islice(iter(stream), world * per_rank)]
    by_rank = [draws(rank, 0) for rank in range(world)]
    assert [url for step in zip(*by_rank) for url in step] == shared
    assert len(set(shared)) == len(urls), "every shard drawn"
    assert draws(0, 1) != by_rank[0]


def write_png_entry(directory: Path, data: bytes) -> None:
    write_tar(directory / "shard-000000.tar", [("000001", {"pose.npy": npy_bytes(np.zeros(26, np.float32)),
                                                           "mask.png": data})])


def image_bytes(image_format: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format=image_format)
    return buffer.getvalue()


def test_png_entries_decode(tmp_path):
    write_png_entry(tmp_path, image_bytes("PNG"))
    (batch,) = make_loader(tmp_path, batch_size=1, batches_per_epoch=None, num_workers=0, resampled=False)
    np.testing.assert_array_equal(batch["mask"][0].numpy(), np.arange(64).reshape(8, 8))


@pytest.mark.parametrize("image_format", ["BMP", "GIF", "TIFF"])
def test_png_entry_with_another_format_is_refused(tmp_path, image_format):
    # PIL would sniff and decode these; a .png entry must be a PNG.
    write_png_entry(tmp_path, image_bytes(image_format))
    with pytest.raises(ShardsError, match=r"000001\.mask\.png is not a PNG"):
        list(make_loader(tmp_path, batch_size=1, batches_per_epoch=None, num_workers=0, resampled=False))


def test_explicit_rank_must_fit_the_world(synthetic_shards):
    with pytest.raises(ValueError, match="rank 3"):
        make_loader(synthetic_shards, batch_size=1, batches_per_epoch=None, resampled=False, rank=3, world_size=3)
    with pytest.raises(ValueError, match="both"):
        make_loader(synthetic_shards, batch_size=1, batches_per_epoch=None, resampled=False, rank=0)
