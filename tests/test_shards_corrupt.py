"""Shards that rot: bit flips, damaged tar headers, truncated, missing and empty shards never train silently.

Each fault under ``data.on_corrupt=error`` (stop with one line naming the shard and sample) and ``skip``
(drop, count, keep every rank's batch count). The reader is tested directly; the run through real
``torchrun`` with 2 gloo ranks, where one rank's bad sample must stop both without a hang.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from shards.format import MANIFEST_NAME, CorruptShardError, ShardsError, check_shard_files
from shards.reader import SKIPPED_KEY, make_loader
from train.config import ConfigError, load_config, validate

ROOT = Path(__file__).resolve().parents[1]
SHARD = "shard-000001.tar"  # the shard the tests damage (10 samples of the 40 in synthetic_shards)


def members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return [m for m in tar if m.isfile()]


def flip(path: Path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def flip_payload(path: Path, index: int = 4) -> str:
    """Flip bits inside the data of the index-th entry; returns the damaged sample's key."""
    member = members(path)[index]
    flip(path, member.offset_data + member.size // 2)
    return member.name.partition(".")[0]


def flip_header(path: Path, index: int = 12) -> None:
    """Flip a bit of the index-th entry's tar header (its name): the header checksum no longer matches."""
    flip(path, members(path)[index].offset + 2)


@pytest.fixture
def shards(synthetic_shards, tmp_path) -> Path:
    """A private copy of the 4 synthetic shards (4 x 10 samples) to damage."""
    return Path(shutil.copytree(synthetic_shards, tmp_path / "synth"))


def read_all(directory: Path, on_corrupt: str = "error", **kwargs) -> list[dict]:
    return list(make_loader(directory, batch_size=5, batches_per_epoch=None, num_workers=0, resampled=False,
                            on_corrupt=on_corrupt, **kwargs))


def skipped(batches: list[dict]) -> list[tuple]:
    return [event for batch in batches for event in batch[SKIPPED_KEY]]


# -- the reader ------------------------------------------------------------------------------------------

def test_intact_shards_read_every_sample_checked(shards):
    batches = read_all(shards)
    assert sum(len(b["pose"]) for b in batches) == 40 and not skipped(batches)
    assert "crc" not in batches[0] and json.loads((shards / MANIFEST_NAME).read_text())["format_version"] == 2


def test_payload_bit_flip(shards):
    key = flip_payload(shards / SHARD)
    with pytest.raises(CorruptShardError, match=rf"{SHARD}: sample {key}: \w+\.npy fails its CRC32 check"):
        read_all(shards)
    batches = read_all(shards, "skip", max_corrupt_fraction=0.5)
    assert sum(len(b["pose"]) for b in batches) == 39
    assert [(Path(url).name, k, n) for url, k, n, _ in skipped(batches)] == [(SHARD, key, 1)]


def test_tar_header_bit_flip(shards):
    # tarfile ends an archive silently at a bad header after the first: only the manifest's count tells.
    flip_header(shards / SHARD)  # entry 12 of 40 (4 per sample): samples 0..2 complete, the rest unread
    with pytest.raises(CorruptShardError, match=rf"{SHARD}: 3 samples, manifest.json lists 10"):
        read_all(shards)
    batches = read_all(shards, "skip", max_corrupt_fraction=0.5)
    assert sum(len(b["pose"]) for b in batches) == 33
    assert [(Path(url).name, n) for url, _, n, _ in skipped(batches)] == [(SHARD, 7)]


def test_first_tar_header_bit_flip(shards):
    flip_header(shards / SHARD, index=0)
    with pytest.raises(CorruptShardError, match=rf"{SHARD}: damaged tar after sample \(none\)"):
        read_all(shards)
    assert sum(len(b["pose"]) for b in read_all(shards, "skip", max_corrupt_fraction=0.5)) == 30


def test_shard_truncated_while_reading(shards):
    # The size check runs when a loader is made; a shard cut afterwards is caught as it is read.
    path, intact = shards / SHARD, (shards / SHARD).read_bytes()
    cut = intact[:members(path)[12].offset_data + 100]  # inside the data of sample 3's first entry (4 per sample)
    for on_corrupt in ("error", "skip"):
        loader = make_loader(shards, batch_size=5, batches_per_epoch=None, num_workers=0, resampled=False,
                             on_corrupt=on_corrupt, max_corrupt_fraction=0.5)
        path.write_bytes(cut)
        if on_corrupt == "error":
            with pytest.raises(CorruptShardError, match=rf"{SHARD}: damaged tar after sample \d+ \(3 samples read"):
                list(loader)
        else:
            batches = list(loader)
            assert sum(len(b["pose"]) for b in batches) == 33
            assert [(Path(url).name, n) for url, _, n, _ in skipped(batches)] == [(SHARD, 7)]
        path.write_bytes(intact)


@pytest.mark.parametrize("fault", ["truncated", "missing", "empty"])
@pytest.mark.parametrize("on_corrupt", ["error", "skip"])
def test_missing_empty_or_truncated_shard_stops_before_reading(shards, fault, on_corrupt):
    path = shards / SHARD
    if fault == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif fault == "missing":
        path.unlink()
    else:
        path.write_bytes(b"")
    expected = {"truncated": "5000 bytes, manifest.json says", "missing": "missing", "empty": "0 bytes"}[fault]
    with pytest.raises(ShardsError, match=rf"{SHARD}: {expected}"):
        make_loader(shards, batch_size=5, batches_per_epoch=3, on_corrupt=on_corrupt)
    with pytest.raises(ConfigError, match=rf"'data.synthetic': .*{SHARD}: {expected}"):  # before any rank starts
        validate(load_config(None, [f"data.synthetic={shards}", f"data.on_corrupt={on_corrupt}"]))


def test_skip_keeps_the_batch_count_and_stops_past_the_fraction(shards):
    for shard in sorted(shards.glob("shard-*.tar")):
        flip_payload(shard)  # one bad sample in 10
    loader = make_loader(shards, batch_size=4, batches_per_epoch=6, num_workers=2, seed=0, on_corrupt="skip",
                         max_corrupt_fraction=0.2)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 6 and all(len(b["pose"]) == 4 for b in batches)
        assert skipped(batches)
    strict = make_loader(shards, batch_size=4, batches_per_epoch=6, num_workers=1, seed=0, on_corrupt="skip",
                         max_corrupt_fraction=0.0)
    # the worker's error comes back as one line (torch folds the worker traceback into the message)
    with pytest.raises(CorruptShardError) as caught:
        list(strict)
    assert re.fullmatch(r"\S+shard-\d+\.tar: 1 of \d+ samples read were corrupt, more than max_corrupt_fraction=0 "
                        r"allows \(last: .*fails its CRC32 check.*\)", str(caught.value)), str(caught.value)


def test_format_1_shards_read_unchecked_with_one_warning(shards, caplog):
    manifest = json.loads((shards / MANIFEST_NAME).read_text())
    manifest["format_version"] = 1
    for shard in manifest["shards"]:
        del shard["bytes"]
    (shards / MANIFEST_NAME).write_text(json.dumps(manifest))
    flip_payload(shards / SHARD, index=5)  # an augment.npy payload: no checksum checks it in format 1
    assert check_shard_files(shards) is not None
    with caplog.at_level(logging.WARNING, logger="shards.reader"):
        for _ in range(2):
            assert sum(len(b["pose"]) for b in read_all(shards)) == 40
    assert [r.message for r in caplog.records].count(next(r.message for r in caplog.records)) == 1
    assert len(caplog.records) == 1 and "format version 1" in caplog.records[0].message


def test_inspect_names_the_corrupt_sample(shards):
    from shards.inspect import inspect

    key = flip_payload(shards / SHARD)
    faults = [f for report in inspect(shards) for f in report.faults]
    assert any(f"{SHARD}: sample {key}:" in f and "CRC32" in f for f in faults), faults


def test_evaluate_refuses_a_corrupt_test_shard(tmp_path):
    from tests.test_evaluate import CROP, TINY, save_checkpoint, write_nyu_shards
    from train.network import build_network

    checkpoint = tmp_path / "step-1.pt"
    save_checkpoint(checkpoint, build_network(TINY, crop=CROP), TINY)
    write_nyu_shards(tmp_path / "test", [5, 6, 7, 8])
    key = flip_payload(tmp_path / "test" / SHARD, index=2)
    result = subprocess.run([sys.executable, "-m", "train.evaluate", "--checkpoint", str(checkpoint), "--data",
                             str(tmp_path / "test"), "--num-workers", "1", "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.fullmatch(rf"error: \S+{SHARD}: sample {key}: \w+\.npy fails its CRC32 check .*",
                        result.stderr.strip()), result.stderr[-3000:]


# -- a run: 2 ranks under torchrun -----------------------------------------------------------------------

def train(*args: str, nproc: int = 2, timeout: float = 150) -> subprocess.CompletedProcess:
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, *launch, "-m", "train", "--config", "configs/ci.yaml", "run.steps=12", "eval.every=0",
           "eval.at_start=false", "checkpoint.every=0", "metrics.image_every=0", "metrics.log_every=4",
           "data.synthetic_batch=8", "data.batches_per_epoch=5", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_run_stops_every_rank_on_a_bit_flip_without_hanging(shards, tmp_path):
    key = flip_payload(shards / SHARD)
    result = train(f"data.synthetic={shards}", f"run.dir={tmp_path / 'run'}")  # timeout: no rank left waiting
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = rf"error: rank \d: \S+{SHARD}: sample {key}: \w+\.npy fails its CRC32 check .*"
    assert len(lines) == 1 and re.fullmatch(expected, lines[0]), result.stderr[-4000:]  # rank 0 says it once
    assert len(re.findall(r"exitcode\s+: 2 \(pid", result.stderr)) == 2, result.stderr[-4000:]  # both ranks exit 2
    assert "File \"" + str(ROOT / "train") not in result.stderr, result.stderr[-4000:]  # no traceback of ours
    assert "exited unexpectedly" not in result.stderr, result.stderr[-4000:]  # nor of the loader's workers


def test_run_skips_corrupt_samples_and_reports_them(shards, tmp_path):
    key = flip_payload(shards / SHARD)
    flip_header(shards / "shard-000002.tar")
    run_dir = tmp_path / "run"
    result = train(f"data.synthetic={shards}", f"run.dir={run_dir}", "data.on_corrupt=skip",
                   "data.max_corrupt_fraction=0.5")
    assert result.returncode == 0, result.stderr[-4000:]
    assert re.search(rf"dropped 1 sample\(s\) of \S+{SHARD}: .*sample {key}: .*CRC32", result.stderr), \
        result.stderr[-4000:]
    assert re.search(r"dropped 7 sample\(s\) of \S+shard-000002.tar: .*3 samples, manifest.json lists 10", result.stderr)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counts = [r["data/skipped_samples"] for r in records if "data/skipped_samples" in r]
    assert len(counts) == 3 and counts[-1] > 0 and counts == sorted(counts), counts
    assert "corrupt sample(s) skipped over all ranks" in (run_dir / "train.log").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("data/skipped_samples")] == counts


def test_run_stops_when_too_much_is_skipped(shards, tmp_path):
    flip_payload(shards / SHARD)
    result = train(f"data.synthetic={shards}", f"run.dir={tmp_path / 'run'}", "data.on_corrupt=skip",
                   "data.max_corrupt_fraction=0", nproc=1)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-4000:]
    assert re.fullmatch(rf"error: \S+{SHARD}: 1 of \d+ samples read were corrupt, more than "
                        r"max_corrupt_fraction=0 allows .*", result.stderr.strip().splitlines()[-1])


def test_run_refuses_a_missing_shard_before_training(shards, tmp_path):
    (shards / SHARD).unlink()
    result = train(f"data.synthetic={shards}", f"run.dir={tmp_path / 'run'}", "data.on_corrupt=skip", nproc=1)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-4000:]
    assert result.stderr.strip().splitlines()[-1] == (f"error: config key 'data.synthetic': {shards / SHARD}: "
                                                      f"missing (listed in {shards / MANIFEST_NAME})")
    assert not (tmp_path / "run").exists()
