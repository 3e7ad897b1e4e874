"""The on-disk cache of raw data files: where it is, how files get in, and how they are verified.

Every raw file has a :class:`RawFile` spec (name, size, md5 and/or sha256). A file is used only
after its size and digest match; anything new is written to a temporary file in the destination
folder and renamed into place only once verified, so a crash or a bad download never leaves a
half-written file under its real name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Mirrors are tried with this timeout (seconds) before falling back to the next source.
DOWNLOAD_TIMEOUT = 5.0
_CHUNK = 1 << 20


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``root`` if given, else ``$DRAWNET_DATA``, else ``~/.cache/drawnet``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("DRAWNET_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "drawnet"


@dataclass(frozen=True)
class RawFile:
    """One raw file as it is stored in the cache, with what it must hash to.

    ``size`` is in bytes; ``None`` only where no trustworthy size is known (the digest still
    decides). ``md5``/``sha256`` are hex digests; at least one is required unless ``pinned`` is
    False: then no published checksum is known, and the file is "trust on first use": its sha256 is
    recorded next to it (``NAME.sha256``) when it first arrives and checked on every later use.
    """

    name: str
    size: int | None
    md5: str | None = None
    sha256: str | None = None
    pinned: bool = True

    def __post_init__(self) -> None:
        if self.pinned and self.md5 is None and self.sha256 is None:
            raise ValueError(f"RawFile {self.name!r} needs an md5 or a sha256 to verify against")


def recorded_sha256_path(dest: Path, spec: RawFile) -> Path:
    return dest.parent / f"{spec.name}.sha256"


def file_digests(path: Path, algorithms: tuple[str, ...] = ("md5", "sha256")) -> dict[str, str]:
    """Hex digests of a file (md5 and/or sha256), read once in chunks."""
    hashers = {a: hashlib.new(a, usedforsecurity=False) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


# (path, size, mtime_ns, spec) of files already verified in this process: loading several splits of
# one data set verifies each file once, not once per split.
_VERIFIED: set[tuple[str, int, int, RawFile]] = set()


def verify_file(path: Path, spec: RawFile, *, what_to_do: str = "") -> None:
    """Raise ValueError unless ``path`` has ``spec``'s size and digest(s)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected {spec.name}). {what_to_do}".strip())
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, spec)
    if key in _VERIFIED:
        return
    hint = what_to_do or "Delete it and fetch again (drawnet data fetch NAME)."
    if spec.size is not None and stat.st_size != spec.size:
        raise ValueError(
            f"{path}: size {stat.st_size} bytes, expected {spec.size} for {spec.name} "
            f"(truncated or wrong file). {hint}"
        )
    wanted = {a: getattr(spec, a).lower() for a in ("md5", "sha256") if getattr(spec, a) is not None}
    if not spec.pinned and not wanted:
        record = recorded_sha256_path(path, spec)
        if not record.is_file():
            raise ValueError(f"{path}: no recorded sha256 ({record.name}) for this unpinned file. {hint}")
        wanted = {"sha256": record.read_text().split()[0].lower()}
    digests = file_digests(path, tuple(wanted))
    for algo, want in wanted.items():
        if digests[algo] != want:
            raise ValueError(f"{path}: {algo} {digests[algo]}, expected {want} for {spec.name}. {hint}")
    _VERIFIED.add(key)


def is_valid(path: Path, spec: RawFile) -> bool:
    try:
        verify_file(path, spec)
    except (ValueError, FileNotFoundError):
        return False
    return True


@contextlib.contextmanager
def staged(dest: Path) -> Iterator[Path]:
    """A temporary path next to ``dest``; renamed onto ``dest`` if the block succeeds, else removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached data files are ordinary readable files
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def install_verified(dest: Path, spec: RawFile, write: Callable[[Path], None]) -> Path:
    """Write ``dest`` through ``write(tmp)``, verify the temporary file, then rename it into place."""
    with staged(dest) as tmp:
        write(tmp)
        if spec.pinned:
            verify_file(tmp, spec)
        else:
            if spec.size is not None and tmp.stat().st_size != spec.size:
                raise ValueError(f"{spec.name}: size {tmp.stat().st_size} bytes, expected {spec.size}")
            digest = file_digests(tmp, ("sha256",))["sha256"]
            warning = f"drawnet: warning: {spec.name} has no published checksum; recording sha256 {digest}"
            print(warning, file=sys.stderr)
            record = recorded_sha256_path(dest, spec)
            with staged(record) as rec_tmp:
                rec_tmp.write_text(f"{digest}  {spec.name}\n")
    return dest


def copy_stream(src, tmp: Path) -> None:
    with open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)


def gunzip_to(src: Path, tmp: Path) -> None:
    """Decompress ``src`` into ``tmp``; a corrupt or truncated gzip file raises ValueError."""
    try:
        with gzip.open(src, "rb") as f:
            copy_stream(f, tmp)
    except (OSError, EOFError) as err:
        raise ValueError(f"{src}: not a valid gzip file ({err}); delete it or fetch it again") from err


def download(url: str, tmp: Path, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """Fetch ``url`` into ``tmp`` (already a temporary path); raises OSError on network failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "drawnet"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) URLs only)
        copy_stream(response, tmp)


def fetch_from_mirrors(dest: Path, spec: RawFile, urls: list[str], tried: list[str]) -> bool:
    """Try each URL in turn; on success ``dest`` holds the verified file. Failures go to ``tried``."""
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"refusing to download from a non-http(s) URL: {url}")
        try:
            install_verified(dest, spec, lambda tmp, url=url: download(url, tmp))
            return True
        except (OSError, http.client.HTTPException, ValueError) as err:
            tried.append(f"{url}: {err}")
    return False


def describe_file(path: Path) -> dict:
    """Size and checksums of a cached file, for ``drawnet data info``."""
    if not path.is_file():
        return {"path": str(path), "present": False}
    return {"path": str(path), "present": True, "size": path.stat().st_size, **file_digests(path)}
