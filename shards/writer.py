"""Sharded, resumable, deterministic builds.

Items (frames or synthetic samples) are numbered 0..N-1 and item i goes to shard ``i // per_shard``, so
a shard's content depends only on its items, never on worker count or timing. Items are made in a
process pool (``imap`` keeps their order); the main process writes each shard under a temporary name and
renames it, then records it in ``.progress.json``. A re-run with the same arguments keeps the shards
recorded there (in this format version) whose file still matches its checksum and makes only the rest; the manifest is written
last. Bad items stop the build with :class:`BadInputError`, or with ``skip_bad`` are listed as skipped.
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from fileio import remove_temporaries, sha256_file, write_json_atomic
from shards.format import FORMAT_VERSION, BadInputError, ShardRecord, ShardsError, shard_name, write_manifest, write_tar

PROGRESS_NAME = ".progress.json"


@dataclass
class ItemResult:
    """What a job returns for one item: a sample (key + encoded entries) or the reason it was skipped."""

    index: int
    key: str | None = None
    entries: dict[str, bytes] | None = None
    skipped: dict[str, Any] | None = None  # {"frame", "path", "reason"}
    bad_input: bool = True  # False: the item holds nothing to build (a frame without a hand), skipped whatever skip_bad


Job = Callable[[int], ItemResult]


@dataclass
class BuildSpec:
    """One shard directory to build."""

    directory: Path
    kind: str  # "nyu" or "synthetic"
    keys: tuple[str, ...]
    args: dict[str, Any]  # the build arguments; a re-run must match them to reuse shards
    num_items: int
    per_shard: int
    workers: int = 1
    skip_bad: bool = False
    desc: str = "build"
    extra_manifest: dict[str, Any] | None = None
    preskipped: dict[int, dict[str, Any]] | None = None  # item index -> skip record, found before the build


_JOB: Job | None = None


def _install_job(job: Job) -> None:
    global _JOB
    _JOB = job
    torch.set_num_threads(1)  # workers are the parallelism; nested thread pools only contend


def _run_item(index: int) -> ItemResult:
    assert _JOB is not None
    return _JOB(index)


def build(spec: BuildSpec, job: Job) -> dict[str, Any]:
    """Make every shard of ``spec`` not already complete; returns the manifest."""
    spec.directory.mkdir(parents=True, exist_ok=True)
    remove_temporaries(spec.directory)  # shards and manifest a killed build left half-written
    num_shards = max(1, -(-spec.num_items // spec.per_shard))
    done = _load_progress(spec)
    todo = [s for s in range(num_shards) if shard_name(s) not in done]
    presk = spec.preskipped or {}
    indices = [i for s in todo for i in range(s * spec.per_shard, min((s + 1) * spec.per_shard, spec.num_items))]
    work = [i for i in indices if i not in presk]
    results = _results(work, job, spec.workers, desc=spec.desc, total=len(work))
    try:
        _write_shards(spec, todo, presk, results, done)
    finally:
        results.close()  # stops the worker pool when a bad item ends the build
    records = [done[shard_name(s)] for s in range(num_shards)]
    manifest = write_manifest(spec.directory, kind=spec.kind, keys=spec.keys, records=records, args=spec.args,
                              extra=spec.extra_manifest)
    (spec.directory / PROGRESS_NAME).unlink(missing_ok=True)
    return manifest


def _write_shards(spec: BuildSpec, todo: list[int], presk: dict[int, dict[str, Any]],
                  results: Iterator[ItemResult], done: dict[str, ShardRecord]) -> None:
    for shard in todo:
        first, last = shard * spec.per_shard, min((shard + 1) * spec.per_shard, spec.num_items)
        samples, skipped = [], []
        for index in range(first, last):
            result = ItemResult(index, skipped=presk[index]) if index in presk else next(results)
            if result.skipped is not None:
                if result.bad_input and not spec.skip_bad:
                    raise BadInputError(result.skipped["path"], result.skipped["reason"])
                skipped.append(result.skipped)
            else:
                samples.append((result.key, result.entries))
        name = shard_name(shard)
        sha = write_tar(spec.directory / name, samples)
        done[name] = ShardRecord(name, len(samples), sha, skipped)
        _save_progress(spec, done)


def _results(indices: list[int], job: Job, workers: int, *, desc: str, total: int) -> Iterator[ItemResult]:
    bar = tqdm(total=total, desc=desc, unit="item", mininterval=1.0)
    if workers <= 1 or len(indices) <= 1:
        for index in indices:
            yield job(index)
            bar.update()
        bar.close()
        return
    # fork like torch's DataLoader workers (fast start, no re-import); the initializer sets one torch thread,
    # which is also how DataLoader keeps forked workers clear of the parent's OpenMP pool.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers, initializer=_install_job, initargs=(job,)) as pool:
        for result in pool.imap(_run_item, indices, chunksize=max(1, min(16, len(indices) // (4 * workers)))):
            yield result
            bar.update()
    bar.close()


def _load_progress(spec: BuildSpec) -> dict[str, ShardRecord]:
    """Shards a previous run of the same build finished and that are still intact."""
    path = spec.directory / PROGRESS_NAME
    manifest_path = spec.directory / "manifest.json"
    source = path if path.exists() else manifest_path if manifest_path.exists() else None
    if source is None:
        return {}
    try:
        state = json.loads(source.read_text())
    except json.JSONDecodeError:
        return {}
    if _canonical(state.get("args")) != _canonical(spec.args):
        raise ShardsError(f"{spec.directory} holds shards of a different build ({source.name} args "
                          f"{state.get('args')}); use another --out or delete it")
    if state.get("format_version") != FORMAT_VERSION:
        return {}  # shards of another format (e.g. without per-sample checksums): build them anew
    shards = state["shards"].values() if isinstance(state["shards"], dict) else state["shards"]
    done = {}
    for value in shards:
        record = ShardRecord.from_dict(value)
        file = spec.directory / record.name
        if file.exists() and sha256_file(file) == record.sha256:
            done[record.name] = record
    return done


def _save_progress(spec: BuildSpec, done: dict[str, ShardRecord]) -> None:
    write_json_atomic(spec.directory / PROGRESS_NAME,
                      {"format_version": FORMAT_VERSION, "args": spec.args, "shards": {name: r.to_dict() for name, r in sorted(done.items())}})


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
