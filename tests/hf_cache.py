"""A Hugging Face hub cache written by hand, in the exact layout huggingface_hub reads offline::

    <cache>/models--ORG--NAME/refs/main                  the commit the branch points at
    <cache>/models--ORG--NAME/blobs/<sha256>             file contents
    <cache>/models--ORG--NAME/snapshots/<commit>/<file>  relative symlinks to the blobs

`offline_hub` points huggingface_hub at an empty temporary cache with HF_HUB_OFFLINE=1. huggingface_hub reads
both variables into `huggingface_hub.constants` when it is imported, so the fixture patches those too.
"""
import hashlib
import os
from pathlib import Path

import pytest


def seed_hf_cache(cache_dir, repo_id, folder, branch="main", commit=None):
    """Put every file of `folder` into the cache as one commit of `repo_id`; point `branch` at it (None: leave
    the refs alone, the commit is reachable by its hash only). Returns the commit hash."""
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commit = commit or hashlib.sha1(repr(sorted(digests.items())).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    for p in files:
        blob = repo_dir / "blobs" / digests[p.name]
        blob.write_bytes(p.read_bytes())
        link = snapshot / p.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    if branch:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / branch).write_text(commit)
    return commit


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty HF cache, offline: returns its path."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
