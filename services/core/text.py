"""Text people write for others to read: display names, bios, messages.

What is removed, everywhere (the rule docs/security.md states):
- control characters (NUL, ESC, DEL, the C1 range...), except a newline (and a tab) in text that may
  span lines; a carriage return becomes a newline;
- bidirectional controls (U+202A-202E embeddings and overrides, U+2066-2069 isolates, U+200E/200F
  marks, U+061C): an override turns "Sam 61" into "Sam 16" on a card, and a reader cannot see it;
- zero-width and invisible characters (U+200B, U+200C, U+2060-2064, U+FEFF, U+180E, U+115F/1160,
  U+3164, U+FFA0), and the zero-width joiner U+200D except inside an emoji sequence, where it is what
  makes a family or a profession emoji.
What remains is then checked: a display name needs a visible character (a letter, digit, punctuation
mark or symbol) and has no line breaks; runs of spaces in it are folded.
"""

from __future__ import annotations

import re
import unicodedata

BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
INVISIBLES = "\u200b\u200c\u2060\u2061\u2062\u2063\u2064\ufeff\u180e\u115f\u1160\u3164\uffa0"
ZWJ = "\u200d"
_REMOVED = re.compile(f"[{BIDI_CONTROLS}{INVISIBLES}\x00-\x08\x0b-\x1f\x7f-\x9f]")
_REMOVED_ONE_LINE = re.compile(f"[{BIDI_CONTROLS}{INVISIBLES}\x00-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


def _emoji_like(char: str) -> bool:
    # Emoji are symbols (So) or, in a sequence, modifiers and variation selectors (Sk, Mn).
    return unicodedata.category(char) in ("So", "Sk", "Mn")


def _keep_joiners_in_emoji(text: str) -> str:
    if ZWJ not in text:
        return text
    kept = []
    for i, char in enumerate(text):
        if char == ZWJ and not (0 < i < len(text) - 1 and _emoji_like(text[i - 1]) and _emoji_like(text[i + 1])):
            continue
        kept.append(char)
    return "".join(kept)


def clean_multiline(text: str) -> str:
    """A bio or a message: controls and invisible characters removed, line breaks kept."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _keep_joiners_in_emoji(_REMOVED.sub("", text))


def clean_line(text: str) -> str:
    """A display name: one line, no invisible characters, spaces folded and trimmed."""
    text = _keep_joiners_in_emoji(_REMOVED_ONE_LINE.sub(" ", text))
    return _SPACES.sub(" ", text).strip()


MAX_FILE_NAME_CHARS = 120


def clean_file_name(name: str) -> str | None:
    """The name of an uploaded file as people see it: its last path part, one clean line, at most
    MAX_FILE_NAME_CHARS (the end, with the extension, kept); None when nothing visible is left."""
    name = clean_line(name.replace("\\", "/").rpartition("/")[2])
    if len(name) > MAX_FILE_NAME_CHARS:
        name = name[: MAX_FILE_NAME_CHARS - 21] + "…" + name[-20:]
    return name if has_visible(name) else None


def has_visible(text: str) -> bool:
    return any(unicodedata.category(char)[0] in "LNPS" for char in text)
