"""Every file tunewise writes goes through here, so that no run ever loses the user's data.

Three promises, each kept in one place:

- **Atomic.** A file appears whole or not at all: it is written to a temporary beside it
  (``.NAME.PID.tmp``) and renamed into place (:func:`atomic_path`, :func:`write_bytes`,
  :func:`write_files`, :func:`write_json`, :func:`write_jsonl`); a folder is staged and swapped in
  the same way (:func:`atomic_directory`). Temporaries of a killed writer (its process is gone)
  are removed by the next writer of the same path (:func:`remove_stale_temporaries`). A full
  disk, a read-only folder or a refused permission is a :class:`~tunewise.errors.TunewiseError`
  naming the file, never a traceback.
- **Never over an input.** :func:`refuse_overwriting_inputs` compares every output with every
  input after resolving links (same path, same file through a symbolic or hard link, or a path
  inside an input folder) and refuses before any work is done; :func:`check_output_file` and
  :func:`check_output_folder` refuse a folder where a file is expected, the reverse, and a
  location that cannot be written.
- **A run folder only touches its own files.** :class:`RunFolder` keeps a manifest
  (``.tunewise-files.json``) of the files tunewise wrote there and their SHA-256; it replaces or
  removes a file only while the file still holds exactly what tunewise wrote. A file the user
  made or edited (a filled-in ``to_label.jsonl``) is never written over, moved or deleted.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from tunewise.errors import TunewiseError

MANIFEST_FILE = ".tunewise-files.json"
_MANIFEST_VERSION = 1

# OS errors the user can fix (space, permissions, names), as (what happened, what to do).
_USER_FIXABLE = {
    errno.ENOSPC: ("no space left on the device", "free some space, or write the output elsewhere with -o"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space, or write the output elsewhere with -o"),
    errno.EFBIG: ("the file is too large for this file system", "write the output to another disk with -o"),
    errno.EACCES: ("permission denied", "choose a folder you can write to with -o, or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to with -o, or change its permissions"),
    errno.EROFS: ("the file system is read-only", "write the output to a writable disk with -o"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter output path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose an output path inside a folder"),
    errno.EISDIR: ("the path is a folder", "give a file name with -o"),
}


# -- encoding -------------------------------------------------------------------------------------


def encode_json(value) -> bytes:
    """Indented JSON, UTF-8, ending in a newline; NaN and infinity are refused (not JSON)."""
    return (json.dumps(value, ensure_ascii=False, allow_nan=False, indent=2) + "\n").encode("utf-8")


def encode_jsonl(records: Iterable[Mapping]) -> bytes:
    """One compact JSON object per line, UTF-8; NaN and infinity are refused (not JSON)."""
    lines = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records)
    return "".join(lines).encode("utf-8")


# -- atomic writes --------------------------------------------------------------------------------


def temporary_path(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """``.NAME.PID.tmp`` beside ``path``: hidden, and named after the writing process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writers of ``path`` left beside it; returns them.

    A temporary is stale when the process named in it is gone. Files and staged folders
    (:func:`atomic_directory`) alike.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for leftover in path.parent.glob(f".{_glob_escape(path.name)}.*.{kind}"):
            pid = leftover.name[len(path.name) + 2:-len(kind) - 1]
            if not pid.isdigit() or _process_alive(int(pid)):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # alive under another user (or not a pid at all: leave it alone)
    return True


@contextlib.contextmanager
def user_fixable_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, a refused permission and similar OS errors into a TunewiseError naming ``path``."""
    try:
        yield
    except OSError as error:
        known = _USER_FIXABLE.get(error.errno)
        if known is None:
            raise
        what, fix = known
        raise TunewiseError(f"cannot write the file: {what}", file=str(path), fix=fix) from None


@contextlib.contextmanager
def parent_folders(path: Path) -> Iterator[None]:
    """Create ``path``'s missing parent folders; remove those still empty if the block fails."""
    missing = []
    for folder in path.parents:
        if folder.exists():
            break
        missing.append(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it into place on success.

    On any error (and after a kill, at the next write of the same path) the temporary is gone and
    ``path`` is untouched. Missing parent folders are created, and removed again on error.
    """
    path = Path(path)
    with user_fixable_os_errors(path), parent_folders(path):
        remove_stale_temporaries(path)
        temporary = temporary_path(path)
        try:
            yield temporary
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, content: bytes) -> Path:
    """Write ``content`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)
    return Path(path)


def write_json(path: str | os.PathLike, value) -> Path:
    """:func:`encode_json` of ``value``, written atomically."""
    return write_bytes(path, encode_json(value))


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> Path:
    """:func:`encode_jsonl` of ``records``, written atomically."""
    return write_bytes(path, encode_jsonl(records))


def write_files(files: Mapping[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files: every one to its temporary first, then all renamed into place.

    A failure before the renames (a full disk, say) touches none of the targets and leaves no
    temporary. Returns the paths in the order given.
    """
    temporaries: dict[Path, Path] = {}
    folders = contextlib.ExitStack()
    try:
        for path, content in files.items():
            path = Path(path)
            with user_fixable_os_errors(path):
                folders.enter_context(parent_folders(path))
                remove_stale_temporaries(path)
                temporary = temporary_path(path)
                temporaries[temporary] = path
                temporary.write_bytes(content)
        for temporary, path in temporaries.items():
            with user_fixable_os_errors(path):
                os.replace(temporary, path)
    except BaseException:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        folders.__exit__(*sys.exc_info())  # removes the folders this call made, if still empty
        raise
    folders.pop_all()
    return [Path(path) for path in files]


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target`` whole.

    An earlier ``target`` is moved aside (``.NAME.PID.old``) only once the new folder is complete,
    then deleted; on error the staging folder is deleted and ``target`` is untouched.
    """
    target = Path(target)
    with user_fixable_os_errors(target), parent_folders(target):
        remove_stale_temporaries(target)
        staging = temporary_path(target)
        retired = temporary_path(target, "old")
        staging.mkdir()
        try:
            yield staging
            if target.exists():
                os.replace(target, retired)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(retired, ignore_errors=True)


# -- checks before any work -----------------------------------------------------------------------


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: equal once links are resolved, or one inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    folder = os.path.realpath(folder)
    return os.path.realpath(path).startswith(folder.rstrip(os.sep) + os.sep)


def refuse_overwriting_inputs(outputs: Mapping[str, str | os.PathLike | None],
                              inputs: Mapping[str, str | os.PathLike | None], *,
                              replaced_whole: bool = False) -> None:
    """Refuse, before any work, an output that would write over an input or over another output.

    ``outputs`` and ``inputs`` map a name for the message (``"-o"``, ``"--export-path"``,
    ``"the pool"``) to a path, or None when not given. An output is refused when it resolves to an
    input (same path, or the same file through a symbolic or hard link), lies inside an input
    folder (a saved dataset), or is the same file as another output. With ``replaced_whole`` the
    outputs are folders written anew (:func:`atomic_directory`), so an input inside one is refused too.

    Raises
    ------
    TunewiseError
        Naming the output, the input it would destroy, and the fix.
    """
    given_outputs = [(name, Path(path)) for name, path in outputs.items() if path is not None]
    given_inputs = [(name, Path(path)) for name, path in inputs.items() if path is not None]
    for position, (name, output) in enumerate(given_outputs):
        for input_name, source in given_inputs:
            swallowed = replaced_whole and _inside(source, output)
            if same_file(output, source) or (source.is_dir() and _inside(output, source)) or swallowed:
                what = "is" if same_file(output, source) else "holds" if swallowed else "lies inside"
                raise TunewiseError(
                    f"the output {what} {input_name} ({source}): writing it would destroy that input",
                    file=str(output), field=_field(name),
                    fix=f"write {name} to another path; tunewise never writes over its inputs",
                )
        for other_name, other in given_outputs[position + 1:]:
            if same_file(output, other):
                raise TunewiseError(f"{name} and {other_name} are the same file, so one would overwrite the other",
                                    file=str(output), field=_field(other_name),
                                    fix=f"give {other_name} another path")


def _field(option: str) -> str:
    return "output" if option == "-o" else option.lstrip("-")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def check_writable_folder(folder: str | os.PathLike, field: str = "output") -> None:
    """Refuse a folder (or its nearest existing parent) that is a file or cannot be written in.

    Writability is tried, not guessed from permission bits (which root, ACLs and read-only
    mounts make unreliable): a hidden probe file is created and removed at once.
    """
    folder = Path(folder)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise TunewiseError("the output's folder is a file", file=str(existing),
                            field=field, fix="choose an output path inside a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".tunewise-write-check.", dir=existing)
    except OSError as error:
        what, fix = _USER_FIXABLE.get(error.errno, (error.strerror or str(error), "choose another output path"))
        raise TunewiseError(f"cannot write in this folder: {what}", file=str(existing), field=field,
                            fix=fix) from None
    os.close(descriptor)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike, field: str = "output",
                      example: str = "-o result.json") -> None:
    """Refuse, before any work, a file output that is a folder or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise TunewiseError("the output path is a folder, and a file is expected here", file=str(path),
                            field=field, fix=f"give a file name, e.g. {example}")
    check_writable_folder(path.parent, field)


def check_output_folder(path: str | os.PathLike, field: str = "output") -> None:
    """Refuse, before any work, a folder output that is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TunewiseError("the output path is a file, and a folder is expected here", file=str(path),
                            field=field, fix="give a folder with -o (it is created when missing)")
    check_writable_folder(path, field)


# -- the run folder -------------------------------------------------------------------------------


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunFolder:
    """A folder of several output files, of which tunewise only ever replaces or removes its own.

    Every file written through :meth:`write` is listed in ``MANIFEST_FILE`` with the SHA-256 of
    its bytes. A file is *owned* while it exists and still holds those bytes; any other file in
    the folder (the user's own, or one the user edited after tunewise wrote it) is never written
    over, moved or deleted: :meth:`check` refuses, before any work, a run that would have to.

    Parameters
    ----------
    path:
        The folder; created by the first :meth:`write`, not before.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def manifest(self) -> dict[str, list[str]]:
        """File name → the SHA-256 digests tunewise wrote under that name (empty without a manifest)."""
        if not self.manifest_path.is_file():
            return {}
        fix = f"delete {MANIFEST_FILE} only if you know that every file in the folder is yours to keep"
        try:
            document = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TunewiseError(f"the run folder's list of tunewise's files is unreadable ({error})",
                                file=str(self.manifest_path), fix=fix) from None
        files = document.get("files") if isinstance(document, dict) else None
        if not isinstance(files, dict) or not all(
                isinstance(name, str) and isinstance(digests, list) and all(isinstance(d, str) for d in digests)
                for name, digests in files.items()):
            raise TunewiseError("the run folder's list of tunewise's files is not in tunewise's format",
                                file=str(self.manifest_path), field="files", fix=fix)
        return files

    def owns(self, name: str) -> bool:
        """Whether ``name`` exists and holds exactly what tunewise last wrote there."""
        path = self.path / name
        digests = self.manifest().get(name)
        return bool(digests) and path.is_file() and not path.is_symlink() and file_digest(path) in digests

    def check(self, names: Iterable[str], inputs: Mapping[str, str | os.PathLike | None] | None = None,
              field: str = "output") -> None:
        """Refuse, before any work, a run that would write ``names`` over an input or a file not ours.

        Also refuses a folder path that is a file, or that cannot be written.
        """
        check_output_folder(self.path, field)
        names = list(names)
        refuse_overwriting_inputs({name: self.path / name for name in names}, inputs or {})
        for name in names:
            path = self.path / name
            if (path.exists() or path.is_symlink()) and not self.owns(name):
                raise TunewiseError(
                    f"the run folder already holds a '{name}' that tunewise did not write (or that was edited "
                    "since), and this run would replace it",
                    file=str(path), field=field,
                    fix="move that file out of the folder, or write the run to a new folder with -o",
                )

    def write(self, files: Mapping[str, bytes], remove: Iterable[str] = ()) -> list[Path]:
        """Write ``files`` (name → bytes) atomically and record them; remove the names in ``remove``
        that tunewise owns (others are left alone). Returns the paths written."""
        remove = [name for name in remove if name not in files]
        self.check(files)
        owned = self.manifest()
        # Two stages, so that a kill between the renames leaves every file recognisably ours: the
        # manifest first accepts the old and the new bytes of each name, then only the new.
        new = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
        during = {**owned, **{name: sorted({*owned.get(name, []), digest}) for name, digest in new.items()}}
        write_bytes(self.manifest_path, self._encode(during))
        paths = write_files({self.path / name: content for name, content in files.items()})
        for name in remove:
            if self.owns(name):
                (self.path / name).unlink()
        # A name whose file is gone or was edited is no longer tunewise's: forget it.
        final = {name: [new[name]] if name in new else digests for name, digests in owned.items()
                 if name in new or self.owns(name)}
        final.update({name: [digest] for name, digest in new.items()})
        write_bytes(self.manifest_path, self._encode(final))
        return paths

    @staticmethod
    def _encode(files: Mapping[str, list[str]]) -> bytes:
        return encode_json({"version": _MANIFEST_VERSION, "written_by": "tunewise",
                            "files": {name: files[name] for name in sorted(files)}})


__all__ = [
    "MANIFEST_FILE",
    "RunFolder",
    "atomic_directory",
    "atomic_path",
    "check_output_file",
    "check_output_folder",
    "check_writable_folder",
    "encode_json",
    "encode_jsonl",
    "file_digest",
    "refuse_overwriting_inputs",
    "remove_stale_temporaries",
    "same_file",
    "temporary_path",
    "user_fixable_os_errors",
    "write_bytes",
    "write_files",
    "write_json",
    "write_jsonl",
]
