"""Where data and results live: local paths and ``s3://``, ``gs://``, ``hdfs://`` or any fsspec URI.

A multi-node Ray cluster needs shared storage: trials move between nodes, so checkpoints and
results written to one node's disk are lost to the others. Ray Tune/Train take a URI as
``storage_path`` directly (through pyarrow); data read by every trial (the prepared cache) is
copied once per node from the URI into a local folder (``localize``), because the cache is
memory-mapped. ``file://`` URIs and plain paths are local. Only pyarrow/fsspec are used here, so
the module is cheap to import.

S3-compatible stores (MinIO, Ceph, moto): ``CLAIMS_SEARCH_S3_ENDPOINT`` (else
``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``) points every ``s3://`` access here, and so
data, Ray Tune, Ray Train and the search state, at that endpoint: pyarrow itself ignores the
AWS variables, so the filesystem is built with ``endpoint_override`` and handed to Ray.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

from claims_search.errors import ClaimsSearchError

# Schemes pyarrow opens natively; anything else goes through fsspec (gcsfs/s3fs/adlfs/memory...).
_PYARROW_SCHEMES = {"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (except ``file://``): storage that is not this machine's disk."""
    scheme = urlparse(str(path)).scheme
    # A one-letter scheme is a Windows drive ("C:\\data"), not a URI.
    return len(scheme) > 1 and scheme != "file"


def is_local(path: str | os.PathLike) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return not is_uri(path)


def local_path(path: str | os.PathLike) -> Path:
    """The absolute local path of a plain path or ``file://`` URI."""
    s = str(path)
    if s.startswith("file://"):
        s = urlparse(s).path
    if is_uri(s):
        raise ClaimsSearchError(f"{s}: not a local path")
    return Path(s).expanduser().resolve()


def normalize(path: str | os.PathLike) -> str:
    """A URI unchanged (minus a trailing slash), a local path made absolute: what to hand to
    another machine or process, whose working directory differs from ours."""
    return str(path).rstrip("/") if is_uri(path) else str(local_path(path))


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or a URI (URIs always use ``/``)."""
    if is_local(base):
        return str(local_path(base).joinpath(*parts))
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(path: str | os.PathLike):
    """``(pyarrow.fs.FileSystem, path inside it)`` for a local path or a URI.

    Native pyarrow filesystems for s3/gs/hdfs/abfs; fsspec (wrapped for pyarrow) for any other
    scheme fsspec knows (``memory://`` in tests, ``gcsfs``/``s3fs`` if installed).
    """
    import pyarrow.fs as pafs

    if is_local(path):
        return pafs.LocalFileSystem(), str(local_path(path))
    uri = str(path)
    scheme = urlparse(uri).scheme
    if scheme == "s3" and s3_endpoint():
        return _s3_with_endpoint(), uri.split("://", 1)[1].rstrip("/")
    if scheme in _PYARROW_SCHEMES:
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as e:  # pyarrow raises several types for bad credentials / buckets
            raise ClaimsSearchError(f"{uri}: cannot open storage: {one_line(e)}") from None
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        raise ClaimsSearchError(f"{uri}: no filesystem for scheme {scheme!r}: {one_line(e)}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), inner


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint every ``s3://`` access goes to, or None for AWS itself."""
    for var in ("CLAIMS_SEARCH_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var].rstrip("/")
    return None


def _s3_with_endpoint():
    """pyarrow's S3 filesystem on :func:`s3_endpoint` (credentials from the usual AWS variables)."""
    import pyarrow.fs as pafs

    url = urlparse(s3_endpoint())
    if not url.scheme or not url.netloc:
        raise ClaimsSearchError(f"CLAIMS_SEARCH_S3_ENDPOINT={s3_endpoint()!r}: expected http(s)://HOST:PORT")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme, region=region)


def exists(path: str | os.PathLike) -> bool:
    """Whether a file or folder exists at ``path`` (local or URI)."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def require(path: str | os.PathLike, what: str) -> str:
    """``normalize(path)``, or a ClaimsSearchError naming ``what`` if nothing is there."""
    try:
        found = exists(path)
    except ClaimsSearchError:
        raise
    except Exception as e:  # network/credential errors from the storage backend
        raise ClaimsSearchError(f"{path}: {what}: cannot be read: {one_line(e)}") from None
    if not found:
        raise ClaimsSearchError(f"{path}: {what} not found")
    return normalize(path)


def tune_storage(path: str | os.PathLike, *, multi_node: bool = False) -> tuple[str, object | None]:
    """``(storage_path, storage_filesystem)`` for ``ray.tune.RunConfig``.

    On a multi-node cluster a local path is refused unless it is on a shared mount
    (``CLAIMS_SEARCH_SHARED_FS=1`` says it is, e.g. NFS mounted at the same path on every node):
    trial checkpoints on one node's disk are invisible to the others.
    """
    if is_local(path):
        if multi_node and os.environ.get("CLAIMS_SEARCH_SHARED_FS") != "1":
            raise ClaimsSearchError(
                f"{path}: storage_path: a local path on a multi-node cluster; use s3://, gs:// "
                "or a shared mount (set CLAIMS_SEARCH_SHARED_FS=1 if it is one)"
            )
        return str(local_path(path)), None
    return ray_storage(normalize(path))


def ray_storage(uri: str) -> tuple[str, object | None]:
    """``(storage_path, storage_filesystem)`` of a URI for Ray Tune's and Ray Train's RunConfig."""
    if urlparse(uri).scheme in _PYARROW_SCHEMES and not (urlparse(uri).scheme == "s3" and s3_endpoint()):
        return uri, None  # Ray resolves these itself (and per node, with that node's credentials)
    fs, inner = filesystem(uri)
    return inner, fs


def localize(path: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> Path:
    """A local folder holding the contents of ``path``: itself if local, else a per-node copy.

    The copy goes to ``cache_root/<hash of the URI>`` (default ``~/.cache/claims-search``),
    is made once (a ``.complete`` marker says it finished) and is reused by later trials on the
    same node. Written through a temporary sibling so a killed copy is never mistaken for one.
    """
    if is_local(path):
        return local_path(path)
    import pyarrow.fs as pafs

    from claims_search.atomic import atomic_dir

    uri = normalize(path)
    root = Path(cache_root or os.environ.get("CLAIMS_SEARCH_CACHE", "~/.cache/claims-search"))
    target = root.expanduser() / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    fs, inner = filesystem(uri)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        raise ClaimsSearchError(f"{uri}: not found")
    try:
        with atomic_dir(target, replace=False) as tmp:
            pafs.copy_files(inner, str(tmp), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
            (tmp / ".complete").write_text(uri)
    except OSError:  # another trial on this node finished the same copy first: use theirs
        if not (target / ".complete").exists():
            raise
    return target


def upload(local: str | os.PathLike, uri: str | os.PathLike) -> str:
    """Copy a local folder to ``uri`` (local or remote); returns the normalized destination."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(uri)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(str(local_path(local)), inner, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    return normalize(uri)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The contents of one file, local or remote."""
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write one file, local (atomically) or remote (object stores publish a whole object)."""
    if is_local(path):
        from claims_search.atomic import atomic_write_bytes

        atomic_write_bytes(local_path(path), data)
        return
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def download(path: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy one file (local or remote) to the local path ``local``, atomically; returns it."""
    from claims_search.atomic import atomic_write_bytes

    atomic_write_bytes(local, read_bytes(path))
    return Path(local)


def remove(path: str | os.PathLike) -> None:
    """Delete a folder (local or remote) and everything in it; nothing there is fine."""
    import shutil

    import pyarrow.fs as pafs

    if is_local(path):
        shutil.rmtree(local_path(path), ignore_errors=True)
        return
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)


def one_line(e: BaseException) -> str:
    """An exception as one short line, for ClaimsSearchError messages."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
