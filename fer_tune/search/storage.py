"""Where Ray Tune keeps a search's trials and checkpoints (``--storage``): by default the search folder
itself (one machine, or a folder every node mounts), else a shared folder or a ``pyarrow.fs`` URI
(``s3://bucket/prefix?endpoint_override=...``, ``gs://...``). The search folder under ``--results``
always holds what a person opens; everything read back from the storage goes through Ray's
``ResultGrid`` or ``pyarrow.fs``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_tune.errors import UserError


def is_uri(value: str) -> bool:
    """True for ``scheme://...`` (a filesystem URI), False for a local path."""
    return "://" in value and not value.startswith("file://")


@dataclass(frozen=True)
class TrialStorage:
    """The Tune storage of one search: ``uri`` as the user gave it (None: the search folder)."""

    folder: Path  # the search folder (local)
    uri: str | None = None

    @property
    def remote(self) -> bool:
        return self.uri is not None and is_uri(self.uri)

    def filesystem(self) -> tuple[Any | None, str]:
        """(a ``pyarrow.fs`` filesystem or None for a local path, the path of this search's storage in it)."""
        if self.uri is None:
            return None, str(self.folder.resolve())
        if not self.remote:
            return None, str(Path(self.uri.removeprefix("file://")).expanduser().resolve() / self.folder.name)
        from pyarrow import fs

        try:
            filesystem, root = fs.FileSystem.from_uri(self.uri)
        except Exception as exc:  # pyarrow: ArrowInvalid / OSError for an unknown scheme or a bad query
            raise UserError(f"--storage {self.uri}: not a storage URI pyarrow can open ({_first_line(exc)})") from None
        return filesystem, f"{root.rstrip('/')}/{self.folder.name}"

    def ray_arguments(self) -> dict[str, Any]:
        """``storage_path`` / ``storage_filesystem`` for Ray Tune's ``RunConfig``."""
        filesystem, root = self.filesystem()
        return {"storage_path": root, "storage_filesystem": filesystem}

    def experiment(self, name: str) -> str:
        """Where Tune keeps the experiment ``name`` (a path inside :meth:`filesystem`)."""
        return f"{self.filesystem()[1]}/{name}"

    def local_root(self) -> Path | None:
        """The local folder Tune writes into, or None for a URI."""
        return None if self.remote else Path(self.filesystem()[1])

    def check_writable(self) -> None:
        """Create this search's storage folder and write a file there, before anything trains."""
        filesystem, root = self.filesystem()
        if filesystem is None:
            try:
                Path(root).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"--storage {self.uri}: cannot create {root} ({exc.strerror})") from None
            return
        probe = f"{root}/.fer-tune-storage-check"
        try:
            filesystem.create_dir(root, recursive=True)
            with filesystem.open_output_stream(probe) as stream:
                stream.write(b"written by fer-tune: the storage is writable\n")
            filesystem.delete_file(probe)
        except Exception as exc:  # pyarrow raises OSError subclasses for credentials, network, permissions
            raise UserError(
                f"--storage {self.uri}: cannot write there ({_first_line(exc)}); check the URI, the endpoint and "
                "the credentials (for S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ?endpoint_override=HOST:PORT)"
            ) from None

    def address(self, path: str) -> str:
        """``path`` (inside :meth:`filesystem`) as a person would open it: a local path, or a URI."""
        if not self.remote:
            return path
        return f"{self.uri.split('://', 1)[0]}://{path}"

    def describe(self) -> str:
        return self.uri or "the search folder"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def remove_experiment(storage: TrialStorage, name: str) -> None:
    """Delete the Tune experiment ``name`` fer-tune ran in ``storage`` (a retraining started over)."""
    filesystem, _ = storage.filesystem()
    path = storage.experiment(name)
    if filesystem is None:
        if Path(path).is_dir():
            shutil.rmtree(path)
        return
    from pyarrow import fs

    if filesystem.get_file_info(path).type == fs.FileType.Directory:
        filesystem.delete_dir(path)
