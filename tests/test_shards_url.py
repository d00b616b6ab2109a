"""Shards over HTTP and through ``pipe:`` commands: the same batches as from the local directory, the same
one-line error for a corrupt shard, a missing remote source refused before training.

A real ``python -m http.server`` on 127.0.0.1 serves a shard folder; ``pipe:cat DIR/{}`` stands for an
object-store command (``pipe:aws s3 cp s3://bucket/synth/{} -``). Reading runs under real torchrun with
2 gloo ranks.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shards.format import read_manifest
from shards.sources import member, subdir
from tests.test_shards_corrupt import SHARD, flip_payload, train

ROOT = Path(__file__).resolve().parents[1]

# Each rank's digests of its first 7 batches (past two epoch ends) from every source given.
BATCHES = """
import hashlib, json, sys
import torch.distributed as dist
from train.data import BatchStream
dist.init_process_group("gloo")
out = {}
for source in sys.argv[2:]:
    stream = BatchStream(source, batch_size=4, batches_per_epoch=3, num_workers=1, seed=3)
    digests = []
    for _ in range(7):
        batch, h = stream.next(), hashlib.sha256()
        for name in sorted(batch):
            h.update(name.encode() + batch[name].numpy().tobytes())
        digests.append(h.hexdigest())
    out[source] = digests
with open(f"{sys.argv[1]}.{dist.get_rank()}", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
"""


@pytest.fixture
def served(tmp_path, synthetic_shards):
    """(local shard dir, its http:// URL) served by http.server from a copy of the synthetic shards."""
    root = tmp_path / "www"
    local = Path(shutil.copytree(synthetic_shards, root / "synth"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/synth"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/manifest.json", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "http.server did not start"
                time.sleep(0.2)
        yield local, url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_source_names():
    assert member("http://h/nyu/", "manifest.json") == "http://h/nyu/manifest.json"
    assert subdir("pipe:aws s3 cp s3://b/nyu/{} -", "train") == "pipe:aws s3 cp s3://b/nyu/train/{} -"
    assert member(subdir("pipe:cat /d/{}", "test"), "shard-000000.tar") == "pipe:cat /d/test/shard-000000.tar"
    assert member("data/x", "manifest.json") == str(Path("data/x/manifest.json"))


def test_http_and_pipe_give_the_batches_of_the_local_dir_under_torchrun(served, tmp_path):
    local, url = served
    pipe = f"pipe:cat {shlex.quote(str(local))}/{{}}"
    assert read_manifest(url) == read_manifest(pipe) == read_manifest(local)  # the manifest, fetched the same way
    script = tmp_path / "batches.py"
    script.write_text(BATCHES)
    out = tmp_path / "digests"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(out), str(local), url, pipe], cwd=ROOT, capture_output=True, text=True,
                            timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    for digests in ranks:
        assert digests[url] == digests[str(local)] and digests[pipe] == digests[str(local)]
    assert ranks[0][str(local)] != ranks[1][str(local)]  # each rank its own share


def test_training_over_http_and_the_same_error_for_a_corrupt_remote_shard(served, tmp_path):
    local, url = served
    trained = train(f"data.synthetic={url}", f"run.dir={tmp_path / 'ok'}", "run.steps=6")
    assert trained.returncode == 0, trained.stderr[-4000:]
    assert json.loads((tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    flip_payload(local / SHARD)  # the same bytes on disk and behind the server
    errors = {}
    for name, source in (("local", str(local)), ("http", url)):
        result = train(f"data.synthetic={source}", f"run.dir={tmp_path / name}")
        assert result.returncode != 0
        lines = [line.replace(source, "SOURCE") for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert lines and all(f"SOURCE/{SHARD}: sample " in line for line in lines), result.stderr[-4000:]
        errors[name] = sorted(lines)
    assert errors["http"] == errors["local"]


def test_a_missing_remote_source_is_refused_before_training(served, tmp_path):
    _, url = served
    result = train(f"data.synthetic={url}-missing", f"run.dir={tmp_path / 'run'}", nproc=1)
    assert result.returncode == 2, result.stderr[-4000:]
    assert result.stderr.startswith(f"error: config key 'data.synthetic': {url}-missing/manifest.json: cannot read "
                                    "the manifest"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
