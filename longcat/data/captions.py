"""Decode caption files losslessly and record what had to be fixed.

Captions are UTF-8 text in principle; in practice some carry a byte-order mark, Windows line ends,
or were saved as latin-1/cp1252. Every byte sequence decodes to some text here (latin-1 maps each byte
to one code point), and the fixups applied are recorded beside the text. Captions up to the probe's
byte limit (`probe.max_caption_bytes`) are kept whole; the probe reads only the start of a longer one,
and the character cut at its end is dropped.
"""

from __future__ import annotations

import codecs
import html
import unicodedata
from dataclasses import dataclass

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


# Characters that draw nothing besides whitespace: by Unicode category (controls, format characters such
# as the zero-width space and joiners, surrogates, separators, combining marks with nothing to mark) and
# the blank letters of a few scripts (Hangul fillers, the Braille blank, Khmer's inherent vowels).
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Mn"})
INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5")


@dataclass(frozen=True)
class Caption:
    text: str
    encoding: str
    fixups: tuple[str, ...]

    @property
    def fixups_text(self) -> str:
        return ",".join(self.fixups)


def _decode(raw: bytes, encoding: str, cut: bool) -> str:
    """`raw` in `encoding`; when `cut`, a character left incomplete at the end is dropped, not an error."""
    return codecs.getincrementaldecoder(encoding)().decode(raw, final=not cut)


def decode_caption(raw: bytes, truncated: str | None = None) -> Caption:
    """The caption text, the encoding it was read with and the fixups (bom, crlf, cr, latin-1, strip).

    `truncated` is given when `raw` is only the start of the caption: the fixup recorded for it (such as
    `truncated from N bytes`), and the character the cut split at the end is dropped.
    """
    cut = truncated is not None
    fixups = []
    encoding = None
    for bom, bom_encoding in _BOMS:
        if raw.startswith(bom):
            raw = raw[len(bom) :]
            encoding = bom_encoding
            fixups.append("bom")
            break
    if encoding is None:
        try:
            text = _decode(raw, "utf-8", cut)
            encoding = "utf-8"
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
            encoding = "latin-1"
            fixups.append("latin-1")
    else:
        try:
            text = _decode(raw, encoding, cut)
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
            encoding = "latin-1"
            fixups.append("latin-1")
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
        fixups.append("crlf")
    if "\r" in text:
        text = text.replace("\r", "\n")
        fixups.append("cr")
    if cut:
        fixups.append(truncated)
    stripped = text.strip()
    if stripped != text.rstrip("\n"):
        fixups.append("strip")
    return Caption(text=stripped, encoding=encoding, fixups=tuple(fixups))


def is_blank(text: str) -> bool:
    """Whether a caption shows nothing: whitespace and invisible characters only, its HTML entities read
    as the text encoder's cleaning reads them (`&nbsp;`, `&#8203;`, unescaped twice)."""
    shown = html.unescape(html.unescape(text))
    return all(
        char.isspace() or char in INVISIBLE or unicodedata.category(char) in INVISIBLE_CATEGORIES
        for char in shown
    )
