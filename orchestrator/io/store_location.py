"""Where an observation store's Parquet parts live: a local folder, or an object-store prefix.

A local folder is written with `os` (a part is written to a temporary file, fsynced, renamed
into place). An object store (``s3://bucket/prefix``) is reached through `pyarrow.fs`: its
endpoint and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL`` for an
S3-compatible server such as MinIO or moto, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``) or the usual AWS configuration files. An object appears whole or not at
all when its upload completes, so a part is uploaded straight under its final name; there is
no rename on S3.

>>> loc = StoreLocation("/tmp/sweep/store")
>>> loc.remote, loc.join("observations", "part-1.parquet")
(False, '/tmp/sweep/store/observations/part-1.parquet')
>>> is_uri("s3://bucket/prefix"), is_uri("/tmp/sweep"), is_uri("C:/sweeps")
(True, False, False)
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

REMOTE_SCHEMES = ("s3",)  # object stores the observation store is tested against (moto's S3 server)


def is_uri(location: Union[str, Path]) -> bool:
    """Whether `location` names an object store (scheme://...) rather than a local path."""
    scheme = urlsplit(str(location)).scheme
    return len(scheme) > 1 and "://" in str(location)  # len 1: a Windows drive letter


def check_uri(uri: str) -> str:
    """`uri` if it names an object-store prefix the store can use (``s3://bucket[/prefix]``); else ValueError.

    >>> check_uri("s3://bucket/sweeps/ladder")
    's3://bucket/sweeps/ladder'
    >>> check_uri("gs://bucket")
    Traceback (most recent call last):
    ...
    ValueError: scheme 'gs' is not supported for the observation store; use s3://bucket/prefix or a local path
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() not in REMOTE_SCHEMES:
        raise ValueError(f"scheme {parts.scheme!r} is not supported for the observation store; "
                         "use s3://bucket/prefix or a local path")
    if not parts.netloc:
        raise ValueError("no bucket; write s3://bucket/prefix")
    return uri


class StoreLocation:
    """A store's root: a local folder (`os`) or an object-store prefix (`pyarrow.fs`)."""

    def __init__(self, location: Union[str, Path]):
        self.remote = is_uri(location)
        if self.remote:
            from trainers.checkpoint_mirror import object_fs  # the trials' checkpoints reach the bucket alike

            uri = check_uri(str(location))
            self.uri = uri.split("?", 1)[0].rstrip("/")
            self.fs, self.root = object_fs(uri)
        else:
            self.fs = None
            self.root = str(location)
            self.uri = self.root

    def __str__(self) -> str:
        return self.uri

    def join(self, *names: str) -> str:
        """A path below the root (in the location's file system)."""
        return (posixpath if self.remote else os.path).join(self.root, *names)

    def describe(self, *names: str) -> str:
        """A path below the root as a user would write it (with the scheme for an object store)."""
        return "/".join([self.uri, *names]) if self.remote else self.join(*names)

    def tune_storage(self, local: Union[str, Path]) -> tuple[str, Any]:
        """(storage_path, storage_filesystem) for Ray Tune's `RunConfig`: the folder ``ray`` below an
        object-store root, through this location's file system (a cluster with no shared path keeps
        Tune's experiment state in the bucket), else the local folder `local` (filesystem None)."""
        return (self.join("ray"), self.fs) if self.remote else (str(local), None)

    def makedirs(self, name: str) -> None:
        """Create the folder `name` below the root (an object store has none: nothing to do)."""
        if not self.remote:
            Path(self.join(name)).mkdir(parents=True, exist_ok=True)

    def parts(self, name: str, prefix: str = "part-", suffix: str = ".parquet") -> list[str]:
        """Paths of the files `prefix*suffix` directly in folder `name`, sorted by name."""
        if not self.remote:
            folder = Path(self.join(name))
            return sorted(str(p) for p in folder.glob(f"{prefix}*{suffix}")) if folder.is_dir() else []
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.join(name), allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File
                      and posixpath.basename(i.path).startswith(prefix) and i.path.endswith(suffix))

    def write_table(self, name: str, filename: str, table: pa.Table) -> str:
        """Write `table` as Parquet file `filename` in folder `name`, whole or not at all; returns its path.

        Locally: a temporary file, fsynced, renamed into place. An object store: one upload under
        the final name (an object is visible only once its upload completed).
        """
        final = self.join(name, filename)
        if self.remote:
            pq.write_table(table, final, filesystem=self.fs)
            return final
        tmp = self.join(name, f".{filename}.tmp")
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass  # the folder itself is unusable: nothing was written there
            raise
        return final

    def read_table(self, path: str, schema: Optional[pa.Schema] = None) -> pa.Table:
        """One Parquet part, read with `schema` (columns it lacks read as null)."""
        return pq.read_table(path, schema=schema, filesystem=self.fs)

    def delete(self, path: str) -> None:
        """Remove one part (gone already: nothing to do)."""
        if self.remote:
            import pyarrow.fs as pafs

            if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
                self.fs.delete_file(path)
        else:
            Path(path).unlink(missing_ok=True)
