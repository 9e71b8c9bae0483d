"""Reading bytes from any fsspec URI: local folders, zip and tar archives (read in place), s3://, memory://.

An archive member is addressed with fsspec's chained-URL syntax, e.g. ``zip://images/a.jpg::/data/x.zip``
or ``tar://a.jpg::s3://bucket/x.tar.gz``. Archive filesystems are cached per process, so listing or reading
many members opens each archive once (forked children open their own).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec

from skinscan.errors import DataError

ARCHIVE_SUFFIXES: dict[str, tuple[str, str | None]] = {
    ".zip": ("zip", None),
    ".tar": ("tar", None),
    ".tar.gz": ("tar", "gzip"),
    ".tgz": ("tar", "gzip"),
    ".tar.bz2": ("tar", "bz2"),
    ".tar.xz": ("tar", "xz"),
}
SIDECAR_SUFFIXES = (".csv", ".json", ".parquet", ".yaml", ".yml", ".md", ".txt")


def archive_kind(uri: str) -> tuple[str, str | None] | None:
    """('zip'|'tar', compression) when `uri` names an archive by its suffix, else None."""
    low = uri.lower()
    for suffix, kind in sorted(ARCHIVE_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if low.endswith(suffix):
            return kind
    return None


def normalize(uri: str) -> str:
    """Local paths become absolute; URIs with a protocol are kept as they are."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


@functools.lru_cache(maxsize=64)
def _open_archive(kind: str, archive_uri: str, compression: str | None = None) -> fsspec.AbstractFileSystem:
    try:  # both archive filesystems open `fo` through fsspec; tar detects its compression itself
        return fsspec.filesystem(kind, fo=archive_uri)
    except Exception as err:  # noqa: BLE001 - any failure means the archive is unreadable
        raise DataError(f"cannot open {kind} archive {archive_uri}: {err}") from None


_ARCHIVES = threading.Lock()


def archive_fs(kind: str, archive_uri: str, compression: str | None = None) -> fsspec.AbstractFileSystem:
    """An fsspec filesystem over an archive, opened once per process. Under a lock: threads that opened the same
    archive at once (evaluation reads with 4) made two filesystems, and the one dropped closed the file the other
    was reading ("seek of closed file")."""
    with _ARCHIVES:
        return _open_archive(kind, archive_uri, compression)


archive_fs.cache_clear = _open_archive.cache_clear  # type: ignore[attr-defined]
# A forked child (a DataLoader worker) must open archives itself: the parent's file object shares its offset with
# the child, and concurrent readers then get each other's bytes.
os.register_at_fork(after_in_child=_open_archive.cache_clear)


def split_chained(uri: str) -> tuple[str, str, str] | None:
    """('zip'|'tar', member, archive_uri) for a chained archive-member URI, else None."""
    for kind in ("zip", "tar"):
        prefix = kind + "://"
        if uri.startswith(prefix) and "::" in uri:
            # the archive is after the last `::`: a member name containing `::` is taken literally
            member, archive = uri[len(prefix) :].rsplit("::", 1)
            return kind, member, archive
    return None


def _fs_for_archive(archive_uri: str) -> fsspec.AbstractFileSystem:
    kind = archive_kind(archive_uri)
    if kind is None:
        raise DataError(f"not an archive: {archive_uri}")
    return archive_fs(kind[0], archive_uri, kind[1])


class TooLarge(Exception):
    """An input above the byte cap; raised before more than cap + 1 bytes are read."""


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """All bytes of one file, archive member or object. Raises FileNotFoundError when absent, and `TooLarge` past
    `max_bytes` having read at most one byte more (a zip-bomb member never inflates beyond the cap)."""
    chained = split_chained(uri)
    if chained:
        _, member, archive = chained
        f = _fs_for_archive(archive).open(member, "rb")
    elif not is_remote(uri):  # a local name is taken literally (fsspec would read `a::b.jpg` as a chained URL)
        f = open(uri.removeprefix("file://"), "rb")
    else:
        f = fsspec.open(uri, "rb").open()
    with f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLarge(f"larger than the {max_bytes:,}-byte cap per input (screen.max_input_bytes)")
    return data


def exists(uri: str) -> bool:
    chained = split_chained(uri)
    if chained:
        _, member, archive = chained
        return _fs_for_archive(archive).exists(member)
    if not is_remote(uri):
        return os.path.exists(uri.removeprefix("file://"))
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write one file or object atomically (folders created as needed; temporary file + rename locally, one PUT on
    object stores): a reader sees the old bytes or the new, never a part. Not into archives."""
    if not is_remote(uri):
        path = Path(normalize(uri).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_local_atomic(path, data)
        return
    fs, path = fsspec.core.url_to_fs(normalize(uri))
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
    fs.invalidate_cache(posixpath.dirname(path))  # a cached listing of the folder would hide the new object


def is_dir(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.isdir(path)


MASK_SUFFIXES = ("_segmentation.png", "_superpixels.png")
"""ISIC's lesion masks and superpixel maps: images, but not dermoscopy images (listed only when asked for)."""
MASK_FOLDER = "masks"


def is_mask(relative_name: str) -> bool:
    """Whether a file, named relative to the listed root, is a mask: an ISIC mask or superpixel name, or any file
    under a `masks/` folder (the layout SkinScan's own archives and HAM10000's segmentations use)."""
    parts = relative_name.strip("/").lower().split("/")
    return parts[-1].endswith(MASK_SUFFIXES) or MASK_FOLDER in parts[:-1]


def keep_listed(name: str, include_masks: bool, relative: str) -> bool:
    """Whether a listed file is an input (not hidden, a sidecar or, unless `include_masks`, a mask)."""
    return _keep(name, False, include_masks, relative)


def _keep(name: str, include_sidecars: bool, include_masks: bool = True, relative: str = "") -> bool:
    base = posixpath.basename(name)
    if not base or base.startswith(".") or "__MACOSX" in name:
        return False
    if not include_masks and is_mask(relative or name):
        return False
    return include_sidecars or not base.lower().endswith(SIDECAR_SUFFIXES)


def list_files(
    uri: str, include_sidecars: bool = False, recursive: bool = True, include_masks: bool = False
) -> list[str]:
    """Every file under a folder or inside an archive, as readable URIs, sorted (`recursive` False: the folder's
    own files only, not those of its subfolders; folders only).

    Sidecar files (CSV, JSON, YAML, Parquet, text) are left out unless `include_sidecars`; masks (`is_mask`, named
    relative to `uri`) unless `include_masks`.
    """
    uri = normalize(uri)
    chained = split_chained(uri)
    if chained:  # a folder inside an archive: zip://images::/data/x.zip
        prefix = chained[1].strip("/") + "/"
        members = ((u, split_chained(u)[1]) for u in list_files(chained[2], include_sidecars, include_masks=True))
        return [u for u, m in members if m.startswith(prefix) and (include_masks or not is_mask(m[len(prefix) :]))]
    kind = archive_kind(uri)
    if kind is not None:
        if not exists(uri):
            raise DataError(f"archive not found: {uri}")
        fs = archive_fs(kind[0], uri, kind[1])
        names = [n for n, info in fs.find("", detail=True).items() if info.get("type") == "file"]
        return sorted(
            f"{kind[0]}://{n.lstrip('/')}::{uri}" for n in names if _keep(n, include_sidecars, include_masks, n)
        )
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise DataError(f"input not found: {uri}")
    if not fs.isdir(path):
        return [uri]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    out = []
    if recursive:
        names = fs.find(path)
    else:  # symbolic links to files are listed too (as `find` lists them); screening decides whether to read them
        names = [
            i["name"]
            for i in fs.ls(path, detail=True)
            if i["type"] == "file" or (i.get("islink") and os.path.isfile(i["name"]))
        ]
    root = path.rstrip("/") + "/"
    for name in names:
        relative = name[len(root) :] if name.startswith(root) else posixpath.basename(name)
        if not _keep(name, include_sidecars, include_masks, relative):
            continue
        out.append(name if protocol in ("file", "local") else f"{protocol}://{name.lstrip('/')}")
    return sorted(out)


def join(root: str, name: str) -> str:
    """Join a member name to a folder or archive root URI."""
    root = normalize(root)
    kind = archive_kind(root)
    if kind is not None:
        return f"{kind[0]}://{name}::{root}"
    chained = split_chained(root)
    if chained:  # a folder inside an archive
        k, member, archive = chained
        return f"{k}://{posixpath.join(member, name)}::{archive}"
    return root.rstrip("/") + "/" + name


def parent(uri: str) -> str:
    chained = split_chained(uri)
    if chained:
        k, member, archive = chained
        par = posixpath.dirname(member)
        return f"{k}://{par}::{archive}" if par else archive
    return uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."


def stem(uri: str) -> str:
    """File name without folders or extension: the image id convention of ISIC (ISIC_0024306)."""
    chained = split_chained(uri)
    name = posixpath.basename(chained[1] if chained else uri)
    return name.split(".", 1)[0]


def is_remote(uri: str | Path) -> bool:
    """An object-store (or any non-local fsspec) URI rather than a local path."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


CACHE_ENV = "SKINSCAN_CACHE"


def cache_root() -> Path:
    """Where objects fetched from object stores are kept on this node ($SKINSCAN_CACHE, ~/.cache/skinscan)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "skinscan")


def cache_dir(kind: str, uri: str) -> Path:
    """This node's cache folder for `uri` (one per URI, shared by every process of the node)."""
    return cache_root() / kind / hashlib.sha256(uri.encode()).hexdigest()[:20]


@contextlib.contextmanager
def node_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on `directory` across the processes of this node (actors, training workers)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_local_atomic(path: Path, data: bytes) -> None:
    """Temporary file beside `path` (a hidden name no reader lists), flushed to disk, then renamed, and the rename
    itself flushed: readers see all or nothing, also after a power loss or on a shared filesystem (a rename without
    fsync can leave a zero-byte file under the final name)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a filesystem that cannot open folders: the file itself is already on disk
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fetch_once(uri: str, kind: str) -> Path:
    """A local path for `uri`: itself when local; for an object-store URI, a copy fetched once per node into the
    cache (the first process fetches under a lock, the others wait and reuse it)."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    directory = cache_dir(kind, uri)
    target = directory / (posixpath.basename(uri.rstrip("/")) or "object")
    with node_lock(directory):
        if not target.is_file():
            write_local_atomic(target, read_bytes(uri))
    return target


STORAGE_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "GOOGLE_CLOUD_PROJECT",
)
"""Object-store settings that may travel with a job or a Ray task, by name: none of them is a secret. Credentials
never travel: every node reads object stores with its own identity (instance profile, IRSA, workload identity, or
the environment it was started with)."""


def storage_env() -> dict[str, str]:
    """The allow-listed, non-secret object-store settings of this process's environment, for Ray workers."""
    import os

    return {k: os.environ[k] for k in STORAGE_SETTINGS if k in os.environ}


DEFAULT_SCHEMES = ("file", "zip", "tar", "s3", "gs")
"""URI schemes a screening input may use unless the config allows more (http(s) only when asked: a manifest author
must not make the workers send requests on their behalf)."""


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def refused(uri: str, allowed_schemes=DEFAULT_SCHEMES, root: str | None = None) -> str | None:
    """Why an input URI must not be read, or None: a scheme (of the URI or of its archive) outside
    `allowed_schemes`, or, for a folder input (`root`), a local path whose real location (symlinks followed) lies
    outside the root's."""
    chained = split_chained(uri)
    for part in (uri, chained[2]) if chained else (uri,):
        if scheme(part) not in allowed_schemes:
            return f"URI scheme {scheme(part)!r} is not allowed (screen.allowed_schemes: {', '.join(allowed_schemes)})"
    if root and not is_remote(uri) and not chained:
        real, top = os.path.realpath(uri.removeprefix("file://")), os.path.realpath(root)
        if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
            return "a symbolic link to a file outside the input folder"
    return None
