"""The built-in model's training text: Jane Austen's six novels, read from Debian's `r-cran-janeaustenr`.

Install: `apt-get install -y --no-install-recommends r-cran-janeaustenr` (Debian 12 "bookworm", version 1.0.0-1).
The package is an R data package: each novel is a character vector (one element per printed line of the Project
Gutenberg plain text) stored in R's lazy-load database `data/Rdata.rdb`, indexed by `data/Rdata.rdx`. This module
reads that database with a small reader of R's serialization format (XDR, version 2/3), so R itself is never run.

Licence: the novels were published 1811–1818 and are in the public domain; the package's help pages say "The UTF-8
plain text was sourced from Project Gutenberg" (Gutenberg's licence header and footer are not in the data). The
package's own code is MIT (`/usr/share/doc/r-cran-janeaustenr/copyright`).
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

PACKAGE_DIR = Path("/usr/lib/R/site-library/janeaustenr")
INSTALL_HINT = "apt-get install -y --no-install-recommends r-cran-janeaustenr"

# Publication order. Persuasion comes last, so its final chapters are the held-out slice.
NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]


# --- R serialization (just what data packages of character vectors need) ---------------------------------------------

_NILVALUE, _REFSXP, _SYMSXP, _LISTSXP, _CHARSXP = 254, 255, 1, 2, 9
_LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP = 10, 13, 14, 16, 19
_SPECIAL_ENVS = {253, 242, 241, 247, 251}  # global, empty, base env, base namespace, missing arg


class _RReader:
    """Reads one serialized R object. Attributes are returned as `(value, {name: attr})` only where present."""

    def __init__(self, buf: bytes):
        if buf[:2] != b"X\n":
            raise ValueError("not an R XDR serialization (expected 'X\\n' header)")
        self.buf, self.pos, self.refs = buf, 2, []
        version = self._int()
        self._int(), self._int()  # writer's R version, minimal reader version
        if version == 3:
            n = self._int()
            self.pos += n  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return v

    def read(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == _NILVALUE or kind in _SPECIAL_ENVS:
            return None
        if kind == _REFSXP:
            return self.refs[(flags >> 8 or self._int()) - 1]
        if kind == _SYMSXP:
            sym = ("symbol", self.read())
            self.refs.append(sym)
            return sym
        if kind == _LISTSXP:  # pairlist: attributes, tag, car, cdr
            attrs = self.read() if has_attr else None
            tag = self.read() if has_tag else None
            items = [(tag[1] if tag else None, self.read())]
            rest = self.read()
            del attrs
            return items + (rest or [])
        if kind == _CHARSXP:
            n = self._int()
            if n == -1:
                return None  # NA_character_
            raw = self.buf[self.pos : self.pos + n]
            self.pos += n
            latin1 = (flags >> 12) & (1 << 2)  # LATIN1_MASK among the levels; otherwise UTF-8 or ASCII
            return raw.decode("latin-1" if latin1 else "utf-8")
        if kind in (_STRSXP, _VECSXP):
            value = [self.read() for _ in range(self._int())]
        elif kind in (_LGLSXP, _INTSXP):
            n = self._int()
            value = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
            self.pos += 4 * n
        elif kind == _REALSXP:
            n = self._int()
            value = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
            self.pos += 8 * n
        else:
            raise ValueError(f"R object type {kind} is not supported by this reader")
        if has_attr:
            return value, dict(self.read())
        return value


def read_lazyload_db(stem: Path) -> dict[str, object]:
    """All objects of an R lazy-load database (`stem.rdx` index + `stem.rdb` data)."""
    index, names = _RReader(gzip.decompress(stem.with_suffix(".rdx").read_bytes())).read()
    index = dict(zip(names["names"], index))
    offsets, offset_names = index["variables"]
    compressed = index["compressed"][0]
    if compressed not in (1, True):
        raise ValueError(f"lazy-load db {stem} uses compression {compressed}; only zlib (1) is supported")
    data = stem.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (start, length) in zip(offset_names["names"], offsets):
        chunk = data[start : start + length]
        (size,) = struct.unpack(">i", chunk[:4])
        raw = zlib.decompress(chunk[4:])
        if len(raw) != size:
            raise ValueError(f"{stem}: object {name!r} inflates to {len(raw)} bytes, index says {size}")
        out[name] = _RReader(raw).read()
    return out


# --- the corpus ----------------------------------------------------------------------------------------------------


def novel_lines(package_dir: Path = PACKAGE_DIR) -> dict[str, list[str]]:
    """{novel: printed lines} straight from the installed package."""
    stem = package_dir / "data" / "Rdata"
    if not stem.with_suffix(".rdb").exists():
        raise FileNotFoundError(f"{stem}.rdb not found: install the corpus with `{INSTALL_HINT}`")
    objects = read_lazyload_db(stem)
    missing = [n for n in NOVELS if n not in objects]
    if missing:
        raise ValueError(f"janeaustenr data lacks {missing}; found {sorted(objects)}")
    return {n: [line or "" for line in objects[n]] for n in NOVELS}


def clean_novel(lines: list[str]) -> list[str]:
    """Printed lines → paragraphs: rejoin wrapped lines, drop `_italic_` marks, squeeze spaces.

    Northanger Abbey ends with a modern editor's "A NOTE ON THE TEXT", which is not Austen's: it is cut.
    """
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip() == "A NOTE ON THE TEXT":
            break
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    out = []
    for p in paragraphs:
        p = re.sub(r"_([^_]+)_", r"\1", p).replace("_", "")
        p = re.sub(r"\s+", " ", p).strip()
        if p:
            out.append(p)
    return out


def paragraphs(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every paragraph of the six novels, in publication order."""
    return [p for lines in novel_lines(package_dir).values() for p in clean_novel(lines)]


def split(paras: list[str], heldout_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """(train, held-out): held-out is the contiguous tail of the corpus (the end of Persuasion), ~5% of characters."""
    total = sum(len(p) + 1 for p in paras)
    acc, cut = 0, len(paras)
    while cut > 0 and acc < heldout_fraction * total:
        cut -= 1
        acc += len(paras[cut]) + 1
    return paras[:cut], paras[cut:]
