"""The one normal form of text inside kormedqa, applied once when anything is read.

The same question arrives in different code points depending on where it was typed or saved:
macOS writes Hangul decomposed (NFD: '고' as 'ᄀ' + 'ᅩ', twice the tokens, and a dictionary term
no longer matches), Windows IMEs and Excel write fullwidth letters, digits and colons ('Ｂ',
'정답：'), web copies carry NBSP, zero-width spaces and soft hyphens, and files end lines in CRLF or
CR. `normalize_text` maps all of those to one form so that records, prompts, the leakage check
and answer extraction compare the same strings.

Deliberately NOT full NFKC. NFKC also rewrites compatibility characters that are content in
Korean medical exams: 'ℓ'/'㎖'/'㎎' -> 'l'/'mL'/'mg', '℃' -> '°C', '①' -> '1', superscripts
('12×10⁹/L' -> '12×109/L', a different number), and Hangul compatibility jamo used for list
items ('ㄱ. ㄴ. ㄷ.') -> conjoining jamo that render and tokenise differently. So the mapping is:

1. NFC (canonical composition only: never changes what a text means).
2. The fullwidth and halfwidth forms block U+FF01-U+FFEE -> the characters they are wide or
   narrow forms of (fullwidth 'Ｂ２：' -> 'B2:', halfwidth Hangul 'ﾡ' -> compatibility 'ㄱ',
   '￦' -> '₩'), ideographic space U+3000 -> ' '.
3. Other spaces (NBSP, narrow NBSP, U+2000-U+200A, U+205F) -> ' '.
4. Invisible format characters removed: zero-width space/non-joiner/joiner, word joiner, BOM
   (U+FEFF anywhere), soft hyphen, left-to-right/right-to-left marks, Mongolian vowel separator.
5. Line ends CRLF, CR, NEL, VT, FF, U+2028, U+2029 -> '\n'.

The function is idempotent; leading/trailing whitespace is left to the caller.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any

_INVISIBLE = "\u00ad\u180e\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"
_SPACES = "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_TABLE: dict[int, str | None] = {ord(c): None for c in _INVISIBLE}
_TABLE.update({ord(c): " " for c in _SPACES})


def _width_form(cp: int) -> str | None:
    # One step of the <wide>/<narrow> decomposition, not NFKC: NFKC would carry halfwidth
    # 'ﾡ' past compatibility 'ㄱ' on to conjoining 'ᄀ'.
    tag, _, target = unicodedata.decomposition(chr(cp)).partition(" ")
    return "".join(chr(int(h, 16)) for h in target.split()) if tag in ("<wide>", "<narrow>") else None


_TABLE.update({cp: form for cp in range(0xFF01, 0xFFEF) if (form := _width_form(cp)) is not None})
_TABLE.update({ord(c): "\n" for c in "\x0b\x0c\x85\u2028\u2029"})
# Everything the table maps, plus CR and any character NFC would change: the fast path skips
# the work for the (common) text that is already normal.
_NEEDS_WORK = re.compile("[\r" + "".join(re.escape(chr(cp)) for cp in _TABLE) + "]")


def normalize_text(text: str) -> str:
    """`text` in kormedqa's normal form (see the module docstring); str in, str out."""
    if _NEEDS_WORK.search(text) is None and unicodedata.is_normalized("NFC", text):
        return text
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_TABLE)
    # NFC last: the table can expose new composable pairs (an invisible between 'ᄀ' and 'ᅩ').
    return unicodedata.normalize("NFC", text)


def normalize_value(value: Any) -> Any:
    """`normalize_text` on every string inside a parsed JSON/CSV/parquet value, keys included."""
    if isinstance(value, str):
        return normalize_text(value)
    if isinstance(value, dict):
        return {normalize_value(k): normalize_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_value(v) for v in value]
    return value


def split_lines(text: str) -> list[str]:
    """Lines of a file's text for any of CRLF, CR or LF line ends (no other separators).

    Unlike `str.splitlines`, U+2028 and friends do not end a line here: they may legally sit
    inside a JSON string, so JSONL line numbers stay the ones an editor shows.
    """
    return re.split(r"\r\n|\r|\n", text)
