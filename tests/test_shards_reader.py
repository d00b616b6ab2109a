"""The training reader: no pickle, equal batches on every rank, every sample once when not resampled."""

from __future__ import annotations

import numpy as np
import pytest

from shards.format import ShardsError, npy_bytes, write_tar
from shards.reader import make_loader


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


def test_every_rank_gets_the_same_number_of_full_batches(synthetic_shards, monkeypatch):
    # 4 shards, 3 ranks x 2 workers = 6 readers: fewer shards than readers.
    monkeypatch.setenv("WORLD_SIZE", "3")
    firsts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        loader = make_loader(synthetic_shards, batch_size=4, batches_per_epoch=7, num_workers=2, seed=1)
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
