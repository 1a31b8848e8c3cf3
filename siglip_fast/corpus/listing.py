"""Naming the units of work, and reading one unit's items.

The unit of work is the input shard: each tar is one unit; plain image files (from folders, brace patterns or the
command line) are units of `shard_size` files in listing order; a `--files` list gives a unit per tar it names and
units of `shard_size` consecutive other lines (recorded as a byte range of the list, not as paths); a `--texts` file
gives units of `text_chunk_bytes` bytes (a line belongs to the chunk where it starts; nothing is read to name them).
Naming touches no tar: `list_units` costs a folder listing or a list file read, O(number of units) in memory.
`unit_items` reads one unit (a tar's headers, a byte range of a list) when the unit is embedded.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from .job import IMAGE_EXTENSIONS, CorpusError, Job

TAR_EXTENSIONS = (".tar",)
COMPRESSED_TAR_EXTENSIONS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


class Unit(NamedTuple):
    """One unit of work. kind: "tar" (source a tar), "files" (paths, each an image or a (path, reason) pair known
    unusable at listing), "list" (image lines [start, end) bytes of the list file `source`), "texts" (lines starting
    in [start, end) of the texts file `source`)."""

    kind: str
    source: str
    start: int = 0
    end: int = 0
    paths: tuple = ()

    @property
    def name(self) -> str:
        if self.kind == "tar":
            return self.source
        if self.kind == "files":
            first = self.paths[0] if isinstance(self.paths[0], str) else self.paths[0][0]
            return f"{len(self.paths)} file(s) from {first}"
        return f"{self.source} bytes {self.start}-{self.end}"


class Item(NamedTuple):
    """One input to embed (or to report): kind "image", "text", or "none" (an empty unit's marker); `source` a file
    (an image file, a tar, a texts file); `member`/`offset`/`size` a tar member's data; `key` the sample key; `text`
    a text known at planning (a line of a texts file, starting at byte `offset`); `caption` (offset, size) of the
    sample's txt member for an image row's metadata; `reason` set when the item is known unusable (reported)."""

    kind: str
    source: str
    unit: int = -1
    member: str | None = None
    offset: int = 0
    size: int = 0
    key: str | None = None
    text: str | None = None
    caption: tuple[int, int] | None = None
    reason: str | None = None


def is_tar_name(path: str) -> bool:
    return path.lower().endswith(TAR_EXTENSIONS + COMPRESSED_TAR_EXTENSIONS)


# -- brace patterns -----------------------------------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`data-{000000..000099}.tar` (zero padding kept), `{a,b}` alternatives, several braces (left to right). A
    malformed range is a CorpusError."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        lo, hi = int(a), int(b)
        if hi < lo:
            raise CorpusError(f"brace pattern {pattern!r}: range {a}..{b} is empty (expected first <= last)")
        width = len(a) if a.startswith("0") and len(a) > 1 else 0
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise CorpusError(f"brace pattern {pattern!r}: expected {{FIRST..LAST}} or {{a,b,...}}, got {{{body}}}")
    return [x for c in choices for x in expand_braces(head + c + tail)]


# -- folders ------------------------------------------------------------------------------------------------------

def _walk(directory: str, seen: set, ancestors: tuple = ()) -> Iterator[tuple[str, str | None]]:
    """(path, reason or None) for every file under `directory` in sorted order (its files, then its subfolders),
    following links to folders; a folder reached twice (a link loop, or a second link to it) and anything that is not
    a regular file (a named pipe, a socket, a device) come with the reason they are skipped."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as e:
        yield directory, f"cannot list the folder: {e.strerror or e}"
        return
    subdirs = []
    for entry in entries:  # the entry's type from the listing itself; a stat only for links, folders and oddities
        path = entry.path
        try:
            is_file, is_dir = entry.is_file(), entry.is_dir()
            if is_dir:
                st = os.stat(path)
            elif not is_file:
                st = os.stat(path) if os.path.exists(path) else None
        except OSError as e:
            yield path, f"cannot read it: {e.strerror or e}"
            continue
        if is_dir:
            subdirs.append((path, (st.st_dev, st.st_ino)))
        elif not is_file:
            if st is None:
                yield path, "a link to nothing (dangling): not read"
                continue
            what = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
            yield path, f"{what}, not a regular file: not read"
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS) or is_tar_name(entry.name):
            yield path, None
        else:
            ext = os.path.splitext(entry.name)[1] or "(none)"
            yield path, f"not an image or .tar file (extension {ext}); found in folder {directory}"
    for path, ident in subdirs:
        if ident in ancestors:
            yield path, "a link back to a folder above it (a loop): not followed"
        elif ident in seen:
            yield path, "a folder already listed through another link: not listed twice"
        else:
            seen.add(ident)
            yield from _walk(path, seen, ancestors + (ident,))


# -- list files ---------------------------------------------------------------------------------------------------

def _list_units(list_file: str, job: Job, units: list) -> None:
    """A --files list: a unit per tar line, units of up to shard_size other lines (byte ranges of the list)."""
    base = os.path.dirname(os.path.abspath(list_file))
    chunk_start = chunk_end = None
    count = 0

    def close():
        nonlocal chunk_start, count
        if chunk_start is not None:
            units.append(Unit("list", list_file, chunk_start, chunk_end))
        chunk_start, count = None, 0

    try:
        with open(list_file, "rb") as f:
            offset = 0
            for raw in f:
                start, offset = offset, offset + len(raw)
                entry = os.fsdecode(raw.strip())
                if not entry:
                    continue
                if job.tar or is_tar_name(entry):
                    close()
                    units.append(Unit("tar", entry if os.path.isabs(entry) else os.path.join(base, entry)))
                    continue
                if chunk_start is None:
                    chunk_start = start
                chunk_end = offset
                count += 1
                if count == job.shard_size:
                    close()
    except OSError as e:
        raise CorpusError(f"--files {list_file}: cannot read it: {e.strerror or e}") from None
    close()


def list_lines(path: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its newline) of the lines starting in [start, end)."""
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line under way belongs to the chunk before
        pos = f.tell()
        while pos < end:
            raw = f.readline()
            if not raw:
                break
            yield pos, raw.rstrip(b"\r\n")
            pos += len(raw)


# -- the listing --------------------------------------------------------------------------------------------------

def list_units(job: Job) -> list[Unit]:
    """The job's units in input order: the positional inputs (tars, folders, image files, brace patterns), then the
    --files lists, then the --texts files. Deterministic: every rank computes the same list."""
    units: list[Unit] = []
    pending: list = []  # plain image files (or (path, reason)) waiting to fill a "files" unit

    def flush():
        while pending:
            units.append(Unit("files", "", paths=tuple(pending[: job.shard_size])))
            del pending[: job.shard_size]

    def add_file(path: str, reason: str | None = None):
        if reason is None and (job.tar or is_tar_name(path)):
            flush()
            units.append(Unit("tar", path))
        else:
            pending.append(path if reason is None else (path, reason))
            if len(pending) >= job.shard_size:
                flush()

    seen: set = set()
    for given in job.inputs:
        if os.path.isdir(given):
            st = os.stat(given)
            seen.add((st.st_dev, st.st_ino))
            for path, reason in _walk(given, seen, ((st.st_dev, st.st_ino),)):
                add_file(path, reason)
        elif os.path.exists(given):
            if not os.path.isfile(given):
                add_file(given, "not a regular file (a named pipe, socket or device): not read")
            else:
                add_file(given)
        elif "{" in given:
            for path in expand_braces(given):
                add_file(path)  # not opened here: a missing shard is reported when its unit is embedded
        else:
            raise CorpusError(f"{given!r}: no such file or directory")
    flush()
    for list_file in job.files:
        _list_units(list_file, job, units)
    for texts_file in job.texts:
        size = os.path.getsize(texts_file)
        for start in range(0, max(size, 1), job.text_chunk_bytes):
            units.append(Unit("texts", texts_file, start, min(size, start + job.text_chunk_bytes)))
    if "image" not in job.fields and any(u.kind in ("files", "list") for u in units):
        first = next(u for u in units if u.kind in ("files", "list"))
        raise CorpusError(f"--field {','.join(job.fields)}: names text members of tar samples, but the inputs hold "
                          f"plain image files ({first.name}), which have no such member; add 'image' to --field to "
                          f"embed them, or give only tars")
    return units


def fingerprint_units(units: Sequence[Unit]) -> str:
    h = hashlib.sha256()
    for u in units:
        h.update(f"{u.kind}\0{u.source}\0{u.start}\0{u.end}\0{len(u.paths)}\n".encode("utf-8", "surrogateescape"))
        for p in u.paths:
            h.update((p if isinstance(p, str) else p[0]).encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


# -- tar headers --------------------------------------------------------------------------------------------------

class Member(NamedTuple):
    name: str
    offset: int  # of its data
    size: int


def _octal(field: bytes) -> int:
    """A header number: octal digits, or GNU base-256; -1 when it is neither (not a tar header)."""
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return -1


def scan_tar(path: str) -> tuple[list[Member], str | None]:
    """The regular-file members of an uncompressed tar (ustar, GNU long names, pax paths) in order, and None or why
    the tar is not complete: a header that is not one (bad checksum), a member whose data runs past the end of the
    file (a download cut short), or no end-of-archive marker. Reads the 512-byte headers only."""
    members: list[Member] = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(6)
        for sig, what in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")):
            if magic.startswith(sig):
                return [], (f"a {what}-compressed tar: members cannot be read by offset; decompress it (shards of "
                            f"uncompressed .tar are the WebDataset norm)")
        pos, long_name, pax = 0, None, {}
        while True:
            f.seek(pos)
            header = f.read(512)
            if len(header) == 0:
                return members, (f"truncated: no end-of-archive marker after {len(members)} member(s) (the file ends "
                                 f"at byte {size}; a download cut short?)")
            if len(header) < 512:
                return members, f"truncated: a member header cut at byte {size} (a download cut short?)"
            if header == b"\0" * 512:
                return members, None
            stored = _octal(header[148:156])
            computed = sum(header[:148]) + 256 + sum(header[156:])
            if stored != computed:
                what = "not a tar" if not members and pos == 0 else f"a damaged header at byte {pos}"
                return members, f"{what} (header checksum mismatch) after {len(members)} member(s)"
            kind = header[156:157]
            length = pax.pop("size", None)
            length = int(length) if length is not None else _octal(header[124:136])
            if length < 0:
                return members, f"a damaged header at byte {pos} (its size field is not a number)"
            data = pos + 512
            end = data + (length + 511) // 512 * 512
            if data + length > size:
                return members, (f"truncated: member {len(members)} ends at byte {data + length}, the file has "
                                 f"{size} bytes (a download cut short?)")
            if kind in (b"L", b"x"):
                f.seek(data)
                payload = f.read(length)
                if kind == b"L":
                    long_name = os.fsdecode(payload.rstrip(b"\0"))
                else:
                    for record in payload.split(b"\n"):
                        k, _, v = record.partition(b" ")[2].partition(b"=")
                        if k in (b"path", b"size"):
                            pax[k.decode()] = os.fsdecode(v)
            elif kind in (b"0", b"\0", b"7"):
                name = pax.pop("path", None) or long_name
                if name is None:
                    name = os.fsdecode(header[0:100].split(b"\0", 1)[0])
                    if header[257:262] == b"ustar":
                        prefix = os.fsdecode(header[345:500].split(b"\0", 1)[0])
                        name = f"{prefix}/{name}" if prefix else name
                members.append(Member(name, data, length))
                long_name = None
                pax = {}
            else:  # folders, links, global headers: not samples' data
                long_name, pax = None, {}
            pos = end


def _sample_key(name: str) -> tuple[str, str]:
    directory, base = posixpath.split(name)
    key, _, ext = base.partition(".")
    return posixpath.join(directory, key), ext.lower()


def tar_items(path: str, unit: int, fields: Sequence[str]) -> list[Item]:
    """One tar unit -> its items: for each sample (members sharing a key) and field, an image or text item, or an
    item with the reason it is skipped (no such member, two image members, a member name twice, a truncated tar)."""
    try:
        members, broken = scan_tar(path)
    except FileNotFoundError:
        return [Item("none", path, unit, reason="no such file")]
    except OSError as e:
        return [Item("none", path, unit, reason=f"cannot read the tar: {e.strerror or e}")]
    samples: dict[str, dict[str, list[Member]]] = {}
    for m in members:
        key, ext = _sample_key(m.name)
        samples.setdefault(key, {}).setdefault(ext, []).append(m)
    images, texts = [], []
    for key, by_ext in samples.items():
        names = ", ".join(sorted(by_ext))
        twice = [ms[0].name for ms in by_ext.values() if len(ms) > 1]
        if twice:
            reason = f"member {twice[0]!r} appears {len(by_ext[_sample_key(twice[0])[1]])} times in the tar: ambiguous"
            for field in fields:
                (images if field == "image" else texts).append(
                    Item("image" if field == "image" else "text", path, unit, key=key, reason=reason))
            continue
        txt = by_ext.get("txt")
        caption = (txt[0].offset, txt[0].size) if txt else None
        for field in fields:
            if field == "image":
                found = [ms[0] for e, ms in by_ext.items() if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
                if len(found) == 1:
                    m = found[0]
                    images.append(Item("image", path, unit, m.name, m.offset, m.size, key, caption=caption))
                else:
                    reason = (f"sample {key!r} has no image member (members: {names})" if not found else
                              f"sample {key!r} has {len(found)} image members ({', '.join(m.name for m in found)}): "
                              f"ambiguous")
                    images.append(Item("image", path, unit, key=key, reason=reason))
            else:
                t = by_ext.get(field)
                if t is None:
                    texts.append(Item("text", path, unit, key=key,
                                      reason=f"sample {key!r} has no .{field} member (members: {names})"))
                else:
                    texts.append(Item("text", path, unit, t[0].name, t[0].offset, t[0].size, key))
    items = images + texts
    if broken is not None:
        items.append(Item("none", path, unit, reason=broken))
    return items


def unit_items(units: Sequence[Unit], k: int, fields: Sequence[str]) -> list[Item]:
    """The items of unit k, images then texts; never raises for a bad input (a reason instead)."""
    u = units[k]
    if u.kind == "tar":
        items = tar_items(u.source, k, fields)
    elif u.kind == "files":
        items = [Item("image", p, k) if isinstance(p, str) else Item("image", p[0], k, reason=p[1]) for p in u.paths]
    elif u.kind == "list":
        base = os.path.dirname(os.path.abspath(u.source))
        items = []
        try:
            for _, raw in list_lines(u.source, u.start, u.end):
                entry = os.fsdecode(raw.strip())
                if entry:
                    items.append(Item("image", entry if os.path.isabs(entry) else os.path.join(base, entry), k))
        except OSError as e:
            items = [Item("none", u.source, k, reason=f"cannot read the list: {e.strerror or e}")]
    else:
        items = []
        try:
            for pos, raw in list_lines(u.source, u.start, u.end):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    items.append(Item("text", u.source, k, offset=pos, reason=f"not UTF-8 text: {e.reason} at byte "
                                                                            f"{pos + e.start}"))
                    continue
                if text.strip():
                    items.append(Item("text", u.source, k, offset=pos, text=text))
        except OSError as e:
            items = [Item("none", u.source, k, reason=f"cannot read the texts file: {e.strerror or e}")]
    return items or [Item("none", u.source, k)]

