"""Release numbers as tuples of ints, never compared as strings (Python 3.6)."""
import re

from jetcap.errors import UsageError


def parse_version(text, what="version"):
    """``"8.2.1.8"`` -> ``(8, 2, 1, 8)``; a part's non-numeric tail ends the number (``"1.12.0rc1"`` ->
    ``(1, 12, 0)``, ``"10.0.1.post1"`` -> ``(10, 0, 1)``); a tuple is returned as ints.

    Raises:
        UsageError: ``text`` does not start with ``<major>.<minor>`` (``what`` names it in the message).
    """
    if isinstance(text, tuple):
        parts = [int(part) for part in text]
    else:
        parts = []
        for piece in str(text).strip().split("."):
            match = re.match(r"^(\d+)", piece)
            if not match:
                break
            parts.append(int(match.group(1)))
            if match.group(1) != piece:
                break
    if len(parts) < 2:
        raise UsageError("cannot parse {} {!r}".format(what, text))
    return tuple(parts)
