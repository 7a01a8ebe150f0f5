"""Walking ``SRC`` safely: every entry gets a verdict, any file name works, and nothing ever blocks.

Scraped face datasets arrive as tarballs and rsync copies with dangling symlinks, symlink loops, stray FIFOs
or sockets, unreadable folders and names in legacy encodings. :func:`scan_tree` gives every entry under
``SRC`` exactly one :class:`Entry`:

- ``input``: a regular file, or a symlink to one (symlinks to files are followed, wherever they point);
- ``skip``: not an input, with the reason -- a hidden name (starting with ``.``), the output folder itself,
  a dangling symlink, a symlink loop, a symlink to a folder (never followed: that would list files twice or
  loop), or anything that is not a regular file (FIFO, socket, device);
- ``fail``: the operating system refused to tell (a folder that cannot be listed, a symlink that cannot be
  followed); the next run looks again.

The scan only uses ``lstat``/``stat``, which never block; :func:`read_source` checks the file type again on
the open descriptor (``O_NONBLOCK``), so a file swapped for a FIFO between scan and read cannot hang a worker.

**Names.** Paths are ``str`` as :func:`os.fsdecode` gives them: bytes that are not valid UTF-8 become lone
surrogates (PEP 383), which every ``os`` call turns back into the same bytes, so such files are read and
their crops written under the same (odd) name. Text files cannot hold lone surrogates, so the manifest and
reports use :func:`escape_name`: the path is written as is when it is valid UTF-8, otherwise each undecodable
byte becomes ``\\xHH`` and each backslash ``\\\\``, and the ``path_escaped`` column says ``1``. That form is
unambiguous (:func:`unescape_name` inverts it exactly).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

__all__ = ["Entry", "MAX_FILE_BYTES", "escape_name", "file_kind", "path_str", "read_source", "scan_tree",
           "unescape_name"]

#: Largest source file read into memory (1 GiB); decode_image refuses bombs by their header anyway.
MAX_FILE_BYTES = 1 << 30
_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass
class Entry:
    """One entry under SRC: ``rel`` (``/``-separated, relative to SRC), ``verdict`` (input/skip/fail),
    ``reason`` ("" for inputs), and for inputs the size and mtime of the file (of the target, for links)."""

    rel: str
    verdict: str
    reason: str = ""
    size: int = 0
    mtime_ns: int = 0


def escape_name(name: str) -> tuple[str, bool]:
    """``name`` -> (text safe for a UTF-8 file, whether it had to be escaped); see the module docstring."""
    try:
        name.encode("utf-8")
        return name, False
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace"), True


def unescape_name(text: str) -> str:
    """Inverse of :func:`escape_name` for an escaped ``text``: the ``str`` that ``os`` calls accept."""
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(text):
        out += text[pos:m.start()].encode("utf-8")
        out += b"\\" if m.group(1) == "\\" else bytes([int(m.group(1)[1:], 16)])
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return os.fsdecode(bytes(out))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for manifest reasons)."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "unknown file type"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _classify_link(path: str, rel: str, src_real: str) -> Entry:
    try:
        shown = escape_name(os.readlink(path))[0]
    except OSError:
        shown = "?"
    try:
        st = os.stat(path)  # follows the link; stat never blocks, even on a FIFO
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Entry(rel, "skip", f"symlink loop (-> {shown})")
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return Entry(rel, "skip", f"dangling symlink (-> {shown})")
        return Entry(rel, "fail", f"error: cannot follow symlink -> {shown} ({_why(e)})")
    if stat.S_ISREG(st.st_mode):
        return Entry(rel, "input", "", st.st_size, st.st_mtime_ns)
    if stat.S_ISDIR(st.st_mode):
        real = os.path.realpath(path)
        where = "inside" if real == src_real or real.startswith(src_real.rstrip(os.sep) + os.sep) else "outside"
        return Entry(rel, "skip", f"symlink to a folder {where} SRC (-> {shown}); not followed")
    return Entry(rel, "skip", f"symlink to a non-regular file ({file_kind(st.st_mode)}) (-> {shown})")


def _classify(e: os.DirEntry, rel: str, src_real: str, exclude: str | None) -> Entry | None:
    """The verdict for one directory entry, or None for a plain sub-folder to descend into."""
    if exclude is not None and e.path == exclude:
        return Entry(rel, "skip", "the output folder (DST); not searched")
    if e.name.startswith("."):
        return Entry(rel, "skip", "hidden (name starts with '.'); not an input")
    try:
        if e.is_symlink():
            return _classify_link(e.path, rel, src_real)
        if e.is_dir(follow_symlinks=False):
            return None
        st = e.stat(follow_symlinks=False)
    except OSError as err:
        return Entry(rel, "fail", f"error: cannot stat ({_why(err)})")
    if stat.S_ISREG(st.st_mode):
        return Entry(rel, "input", "", st.st_size, st.st_mtime_ns)
    return Entry(rel, "skip", f"not a regular file ({file_kind(st.st_mode)})")


def scan_tree(src: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None) -> list[Entry]:
    """Every entry under the folder ``src`` (recursively, sorted by path); ``exclude`` is a folder not to
    search (the output folder when it lies inside SRC). Raises DataError only if ``src`` cannot be listed."""
    root = os.fspath(src)
    src_real = os.path.realpath(root)
    skip = None if exclude is None else os.fspath(exclude)
    out: list[Entry] = []
    stack = [("", root)]
    while stack:
        prefix, path = stack.pop()
        try:
            with os.scandir(path) as it:
                items = sorted(it, key=lambda d: d.name)
        except OSError as e:
            if not prefix:
                raise DataError(f"cannot list source folder {root}: {_why(e)}") from e
            out.append(Entry(prefix.rstrip("/"), "fail", f"error: cannot list folder ({_why(e)})"))
            continue
        for d in items:
            ent = _classify(d, prefix + d.name, src_real, skip)
            if ent is None:
                stack.append((prefix + d.name + "/", d.path))
            else:
                out.append(ent)
    out.sort(key=lambda x: x.rel)
    return out


def read_source(path: str | os.PathLike[str], name: str | None = None) -> bytes:
    """The bytes of a regular file, without ever blocking.

    Raises DataError (naming ``name``, default the path) when it is not a regular file (checked on the open
    descriptor, opened non-blocking), empty, or over :data:`MAX_FILE_BYTES`; OSError when the OS refuses
    (permission, vanished, I/O error) -- the caller decides whether that is worth a retry.
    """
    label = name or os.fspath(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # never open a FIFO or device: opening one can block or have effects
        raise DataError(f"{label}: not a regular file ({file_kind(st.st_mode)})")
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since the stat above
            raise DataError(f"{label}: not a regular file ({file_kind(st.st_mode)})")
        data = bytearray()
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            data += block
            if len(data) > MAX_FILE_BYTES:
                raise DataError(f"{label}: over {MAX_FILE_BYTES:,} bytes; too large for one image")
    finally:
        os.close(fd)
    if not data:
        raise DataError(f"{label}: empty file")
    return bytes(data)


def path_str(p: Path) -> str:
    """``str`` of a path, for messages (lone surrogates escaped so the text can be printed and written)."""
    return escape_name(str(p))[0]
