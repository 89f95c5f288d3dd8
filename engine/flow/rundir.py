"""A job's run directory — dead letters, verify results, reports, a learned linear map — on a local path or behind a
pyarrow.fs URI (s3://, gs://, file://), so that on a cluster every node writes to the same place.

A relative path is made absolute once, on the driver: under `ray job submit` the driver's working directory is
Ray's temporary copy of the project, which vanishes with the job.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_LOCAL_ROOT = "~/reembed-runs"  # beside the Qdrant-stored checkpoint: the driver machine's home


def resolve_root(configured: str | None, checkpoint_uri: str | None) -> str:
    """The runs root as an absolute path or URI: the configured one, else beside the checkpoint."""
    if configured is None:
        if checkpoint_uri is not None:
            return checkpoint_uri.rstrip("/") + "/runs" if "://" in checkpoint_uri else \
                str(Path(checkpoint_uri).expanduser().resolve() / "runs")
        return str(Path(DEFAULT_LOCAL_ROOT).expanduser().resolve())
    if "://" in configured:
        return configured.rstrip("/")
    path = Path(configured).expanduser()
    if not path.is_absolute():
        path = path.resolve()
        if "_ray_pkg_" in str(path):
            log.warning("dead_letter.dir %r resolves inside Ray's temporary working directory (%s), which is deleted "
                        "with the job; set an absolute path every node sees, or an s3:// / gs:// URI", configured,
                        path)
    return str(path)


class RunDir:
    """One job's directory under a runs root (a local path or a pyarrow.fs URI)."""

    def __init__(self, root: str, job_id: str) -> None:
        from pyarrow import fs

        self.uri = f"{root.rstrip('/')}/{job_id}"
        if "://" in root:
            self.fs, base = fs.FileSystem.from_uri(root)
            self.local = False
        else:
            self.fs, base = fs.LocalFileSystem(), root
            self.local = True
        self.path = f"{base.rstrip('/')}/{job_id}"

    def __str__(self) -> str:
        return self.uri

    def join(self, *names: str) -> str:
        """A file's path inside the directory, as the filesystem names it."""
        return "/".join([self.path, *names])

    def display(self, *names: str) -> str:
        """A file's full name for people and reports (a URI for object stores)."""
        return "/".join([self.uri, *names])

    def local_path(self, *names: str) -> Path | None:
        """The file as a local Path, when the directory is on this machine's filesystem."""
        return Path(self.join(*names)) if self.local else None

    def ensure(self, *names: str) -> None:
        self.fs.create_dir(self.join(*names), recursive=True)

    def exists(self, *names: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self.join(*names)).type != fs.FileType.NotFound

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write a file whole: a reader sees the old one or the new one, never half of it."""
        parent = os.path.dirname(name)
        self.ensure(parent) if parent else self.ensure()
        target = self.join(name)
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, target)  # a rename on local disks; object stores replace whole objects anyway
        return self.display(name)

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode("utf-8"))

    def read_text(self, name: str) -> str | None:
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(self.join(name)) as f:
            return f.read().decode("utf-8")

    def list(self, folder: str, suffix: str = "") -> list[str]:
        """File paths (filesystem names) directly inside `folder`, sorted."""
        from pyarrow import fs

        if not self.exists(folder):
            return []
        infos = self.fs.get_file_info(fs.FileSelector(self.join(folder), recursive=False))
        return sorted(i.path for i in infos if i.type == fs.FileType.File and i.path.endswith(suffix))

    def delete(self, path: str) -> None:
        self.fs.delete_file(path)

    def delete_dir(self, folder: str) -> None:
        if self.exists(folder):
            self.fs.delete_dir(self.join(folder))

    def dataset(self, folder: str) -> Any:
        """The Parquet files of `folder` as one pyarrow dataset."""
        import pyarrow.dataset as ds

        return ds.dataset(self.join(folder), filesystem=self.fs, format="parquet")
