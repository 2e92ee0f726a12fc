"""
The one filename sanitiser: a name from an email (or from the model) made
safe to show, to put in a ``Content-Disposition`` and to save under.

Both places a filename comes from use it: the BODYSTRUCTURE of a message
read (`mailmcp.mail._mime`, after RFC 2047 decoding) and an attachment stored or
served (`mailmcp.attachments`).  One set of rules, the stricter of each.
"""

from __future__ import annotations

import re
import unicodedata

#: Longest filename kept, extension included.
MAX_FILENAME_CHARS = 180

_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_UNSAFE_CHARS = re.compile(r'[/\\:*?"<>|]')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


def sanitise_filename(name: str | None, default: str = "attachment") -> str:
    """
    C{name} with no directory part (``../../etc/passwd`` → ``passwd``), no
    control, bidi or invisible characters (the ``invoice\\u202efdp.exe``
    trick), no path separators or shell-special characters, no leading or
    trailing dots, no Windows device name, at most `MAX_FILENAME_CHARS`
    characters with the extension kept (MM-07, S3-04); C{default} when
    nothing is left.
    """
    if not name:
        return default
    text = unicodedata.normalize("NFC", str(name))
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    text = _UNSAFE_CHARS.sub("_", text)
    text = " ".join(text.split()).strip(" .")
    if not text:
        return default
    if _WINDOWS_RESERVED.match(text):
        text = "_" + text
    if len(text) > MAX_FILENAME_CHARS:
        stem, dot, extension = text.rpartition(".")
        if dot and 0 < len(extension) <= 16:
            text = stem[: MAX_FILENAME_CHARS - len(extension) - 1] + "." + extension
        else:
            text = text[:MAX_FILENAME_CHARS]
    return text
