"""Where shards are read from: a local directory, an ``http(s)://`` URL or a ``pipe:`` command.

Every file (each shard and ``manifest.json``) is opened with webdataset's openers (``wds.gopen``): a local
path with ``open``, ``http(s)://`` with ``curl``, ``pipe:CMD`` by running CMD in a shell and reading its
stdout. A source names a shard directory; the files in it are found by name:

    data/synth                                   -> data/synth/shard-000000.tar
    http://host:8000/synth                       -> http://host:8000/synth/shard-000000.tar
    pipe:aws s3 cp s3://bucket/synth/{} -        -> pipe:aws s3 cp s3://bucket/synth/shard-000000.tar -
    pipe:cat /data/synth                         -> pipe:cat /data/synth/shard-000000.tar

``{}`` in a remote source marks where a file's name goes (else it is appended after a ``/``); a
sub-directory (an NYU root's ``train/``) goes there too: ``.../nyu/{}`` -> ``.../nyu/train/{}``.
A ``pipe:`` source runs its command through the shell: use only sources you wrote yourself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

import webdataset as wds

PLACEHOLDER = "{}"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(source: str | Path) -> bool:
    """A ``pipe:`` command or a ``scheme://`` URL, rather than a local path."""
    text = str(source)
    return text.startswith("pipe:") or bool(_URL.match(text))


def subdir(source: str | Path, name: str) -> str:
    """The source of sub-directory ``name`` of ``source`` (an NYU root's ``train``)."""
    if not is_remote(source):
        return str(Path(source) / name)
    text = str(source)
    if PLACEHOLDER in text:
        return text.replace(PLACEHOLDER, f"{name}/{PLACEHOLDER}", 1)
    return f"{text.rstrip('/')}/{name}"


def member(source: str | Path, name: str) -> str:
    """The URL (or path) of file ``name`` in ``source``."""
    if not is_remote(source):
        return str(Path(source) / name)
    text = str(source)
    if PLACEHOLDER in text:
        return text.replace(PLACEHOLDER, name, 1)
    return f"{text.rstrip('/')}/{name}"


def open_source(url: str | Path) -> BinaryIO:
    """A byte stream of one file of a source (webdataset's ``gopen``); a failed command or download
    raises OSError when read or closed."""
    return wds.gopen(str(url), "rb")


def read_bytes(url: str | Path) -> bytes:
    with open_source(url) as stream:
        return stream.read()
