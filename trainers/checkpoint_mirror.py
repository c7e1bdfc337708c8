"""A trial's checkpoint folder mirrored in an object store, for a cluster with no shared path.

A trial saves its checkpoints in `config.checkpoint_dir` on the node it runs on, as always. When
`config.checkpoint_mirror` is set (an ``s3://bucket/prefix`` URI: the controller sets it when the
sweep's store is on S3), every saved checkpoint is copied there too, its pointer file last
(DeepSpeed's ``latest``, the simulated trainer's ``simulated.json``): the mirror never names a
checkpoint it does not hold whole (an object is visible only once its upload completed). A trial
started on any node -- Tune's restart after a crash, `scalesweep resume` on another machine --
first copies the mirror into its local folder. The mirror is the authority: a node's local folder
may be older (the trial ran on, elsewhere, since).

Endpoint and credentials are pyarrow's S3 defaults (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, or an instance role) on every node that runs
trials. No Ray and no orchestrator here: trainers know only the trial contract.

>>> mirror_path("/sweeps/x/checkpoints/t1", "s3://b/p/checkpoints/t1", "/sweeps/x/checkpoints/t0/step8")
's3://b/p/checkpoints/t0/step8'
"""
from __future__ import annotations

import functools
import os
import posixpath
from pathlib import Path
from typing import Callable, Iterable, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Files at most this large are always copied down (pointers, small state); a larger file whose
# local copy has the same size is taken as the same file (a checkpoint's tag folder is written
# once per step, and a step's state is the same whichever node computed it).
SMALL_FILE = 64 * 1024


def delayed_open(uri: str) -> str:
    """`uri` with ``allow_delayed_open=true`` unless it says otherwise: pyarrow's S3 file system then
    sends a small (or empty) file in one PutObject request, not a multipart upload -- also what
    moto's server handles (it fails an empty multipart upload, as Ray Train's storage marker is).

    >>> delayed_open("s3://bucket/prefix")
    's3://bucket/prefix?allow_delayed_open=true'
    """
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    query.setdefault("allow_delayed_open", "true")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def object_fs(uri: str):
    """(pyarrow file system, path in it) of an object-store URI (see `delayed_open`)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(delayed_open(uri))
    return fs, path.rstrip("/")


def mirror_path(checkpoint_dir: str, mirror: str, local: str) -> str:
    """The mirror URI of `local`, a path beside or below `checkpoint_dir` (a WSD trunk's tag folder,
    say), given that `checkpoint_dir`'s mirror is `mirror`."""
    rel = os.path.relpath(local, os.path.dirname(os.path.normpath(checkpoint_dir)))
    scheme, _, base = mirror.split("?", 1)[0].rstrip("/").partition("://")
    return f"{scheme}://" + posixpath.normpath(posixpath.join(posixpath.dirname(base), *Path(rel).parts))


POINTERS = ("latest", "simulated.json")  # the file naming a trial's newest checkpoint: DeepSpeed's, the simulated trainer's


def checkpoint_step(mirror: str) -> Optional[int]:
    """The step of the checkpoint the mirror's pointer names (DeepSpeed's ``latest`` = ``step<k>``,
    the simulated trainer's ``simulated.json``); None without one (or a user's own layout)."""
    import json

    fs, root = object_fs(mirror)
    for pointer in POINTERS:
        try:
            with fs.open_input_stream(posixpath.join(root, pointer)) as fh:
                text = fh.read().decode().strip()
        except (FileNotFoundError, OSError):
            continue
        try:
            return int(text.removeprefix("step")) if pointer == "latest" else int(json.loads(text)["step"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def drop_past(mirror: str, step: int) -> Optional[int]:
    """Drop the mirror's pointer if it names a checkpoint past `step` (the last step the store recorded
    of the trial), so the trial starts again from step 0 rather than after reports nobody recorded;
    the step it named, or None when nothing was dropped. Tag folders stay (a WSD branch point)."""
    at = checkpoint_step(mirror)
    if at is None or at <= step:
        return None
    remove(mirror, POINTERS)
    return at


def pull(local_dir: str, mirror: str) -> int:
    """Copy what the mirror holds into `local_dir` (replacing older local copies); files copied.

    Each file is downloaded to a temporary name and renamed into place, so ranks of one trial
    that share a node may pull into the same folder at once. A pointer file (`POINTERS`) the
    mirror lacks is removed locally: every local checkpoint was copied up, so the mirror dropped it
    (`drop_past`), and a trial must not resume from it.
    """
    import pyarrow.fs as pafs

    fs, root = object_fs(mirror)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    names = {posixpath.relpath(i.path, root) for i in files}
    for pointer in POINTERS:
        if pointer not in names:
            Path(local_dir, pointer).unlink(missing_ok=True)
    copied = 0
    for info in sorted(files, key=lambda i: i.path):
        target = Path(local_dir, *posixpath.relpath(info.path, root).split("/"))
        if info.size > SMALL_FILE and target.is_file() and target.stat().st_size == info.size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.pull")
        try:
            with fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        copied += 1
    return copied


def pull_trial(checkpoint_dir: str, mirror: str, branch_from: Optional[str] = None) -> int:
    """Before a trial starts: its checkpoint from the mirror, and a WSD branch's trunk checkpoint
    (`branch_from`, a tag folder beside `checkpoint_dir`) from the trunk's mirror unless the branch
    has a checkpoint of its own (a `POINTERS` file); files copied."""
    copied = pull(checkpoint_dir, mirror)
    if branch_from and not any(Path(checkpoint_dir, p).is_file() for p in POINTERS):
        copied += pull(branch_from, mirror_path(checkpoint_dir, mirror, branch_from))
    return copied


def push(local_dir: str, mirror: str, names: Iterable[str] = (), pointer: Optional[str] = None,
         only=lambda name: True) -> int:
    """Upload `names` (files or folders, relative to `local_dir`), then the `pointer` file; files uploaded.

    `only(file name)` filters the files inside folders (a rank uploads the shards it wrote). The
    pointer goes last: the mirror names a checkpoint only once the checkpoint is there.
    """
    fs, root = object_fs(mirror)
    uploaded = 0

    def put(path: Path) -> None:
        nonlocal uploaded
        rel = path.relative_to(local_dir).as_posix()
        with open(path, "rb") as src, fs.open_output_stream(posixpath.join(root, rel)) as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        uploaded += 1

    for name in names:
        path = Path(local_dir, name)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if f.name.startswith(".") or not only(f.name):
                continue  # a temporary file of a write in progress
            put(f)
    if pointer is not None and Path(local_dir, pointer).is_file():
        put(Path(local_dir, pointer))
    return uploaded


def replace_with(local_dir: str, mirror: str) -> int:
    """Make the mirror a copy of `local_dir` (every file uploaded; what the folder no longer has
    deleted); files uploaded. For a program whose checkpoint layout is its own (no known pointer)."""
    import pyarrow.fs as pafs

    folder = Path(local_dir)
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    uploaded = push(local_dir, mirror, names)
    fs, root = object_fs(mirror)
    here = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if names else set()
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and posixpath.relpath(info.path, root) not in here:
            fs.delete_file(info.path)
    return uploaded


def mirrored(fn: Callable) -> Callable:
    """A user's Python trainer `fn(config, report)` with its checkpoint folder mirrored: the mirror
    copied in before it runs, the folder copied up when it returns or raises (one worker: the mirror
    made a copy of the folder; several: each rank adds the files it has). Without a mirror: `fn`'s call."""

    @functools.wraps(fn)
    def run(config, report, *args, **kwargs):
        if not (config.checkpoint_dir and config.checkpoint_mirror):
            return fn(config, report, *args, **kwargs)
        pull_trial(config.checkpoint_dir, config.checkpoint_mirror, config.branch_from)
        returned = False
        try:
            out = fn(config, report, *args, **kwargs)
            returned = True
            return out
        finally:
            try:
                if config.workers > 1:
                    folder = Path(config.checkpoint_dir)
                    push(config.checkpoint_dir, config.checkpoint_mirror,
                         [p.name for p in folder.iterdir()] if folder.is_dir() else [])
                else:
                    replace_with(config.checkpoint_dir, config.checkpoint_mirror)
            except Exception:  # noqa: BLE001 -- the trainer's own error, if any, is the one to see
                if returned:
                    raise

    return run


def remove(mirror: str, names: Iterable[str]) -> None:
    """Delete the folders or files `names` below the mirror (gone already: nothing to do)."""
    import pyarrow.fs as pafs

    fs, root = object_fs(mirror)
    for name in names:
        path = posixpath.join(root, name)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)


def listing(mirror: str) -> list[str]:
    """Names directly below the mirror (files and folders), sorted."""
    import pyarrow.fs as pafs

    fs, root = object_fs(mirror)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos)


__all__ = ["POINTERS", "checkpoint_step", "delayed_open", "drop_past", "listing", "mirror_path", "mirrored", "object_fs", "pull", "pull_trial", "push", "remove", "replace_with"]
