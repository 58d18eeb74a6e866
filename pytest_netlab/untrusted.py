"""What a guest controls, made safe for the host: text shown on a terminal has its
control characters escaped, and output kept in memory or on disk has a byte cap with
a visible note of what was cut.

A guest is software under test and may be hostile: nothing it prints may move the
user's cursor, retitle their terminal or hide a line (escape sequences), and nothing it
sends may decide how much host memory or disk is used. Files keep the guest's raw bytes;
only what is *shown* (report sections, error messages, log lines) is escaped.
"""

from __future__ import annotations

DEFAULT_OUTPUT_LIMIT = 16 * 1024 * 1024  # bytes kept of each command stream and console log
MIN_OUTPUT_LIMIT = 1024
_CHUNK = 65536  # the most a read of a channel returns

# C0 controls but newline and tab, DEL, and C1 controls (0x80-0x9f: a terminal may take
# U+009B as CSI, as ESC [ is)
_CONTROLS = [c for c in range(0x20) if c not in (0x09, 0x0A)] + [0x7F, *range(0x80, 0xA0)]
_ESCAPES = {c: f"\\x{c:02x}" for c in _CONTROLS}


def printable(text: str) -> str:
    r"""*text* with every control character but newline and tab written as ``\xNN``:
    ``"a\x1b[2Jb"`` -> ``"a\\x1b[2Jb"``. What any guest text goes through before it is
    shown (report sections, error messages, log lines)."""
    return text.translate(_ESCAPES)


def truncation_note(cut: int) -> bytes:
    """The line that stands where *cut* bytes of output were left out."""
    return f"\n[... {cut} bytes truncated]\n".encode()


class CappedOutput:
    """The bytes of one output stream, at most about *limit* of them kept in memory:
    all of it while it fits, else its first half and its last half with a
    :func:`truncation_note` between them. ``total`` counts every byte received, so
    positions in the whole stream (where an end mark was found) stay usable."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head_max = limit - limit // 2
        self._tail_max = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def append(self, data: bytes) -> None:
        self.total += len(data)
        free = self._head_max - len(self.head)
        if free > 0:
            self.head += data[:free]
            data = data[free:]
        self.tail += data
        # trimmed now and then, not per chunk; what stays is the last half and a chunk more
        # (an end mark found in the last chunk may leave bytes after it)
        if len(self.tail) > 2 * (self._tail_max + _CHUNK):
            del self.tail[: len(self.tail) - self._tail_max - _CHUNK]

    def value(self, end: int | None = None) -> bytes:
        """The stream up to position *end* (all of it if ``None``), cut to the limit."""
        end = self.total if end is None else min(end, self.total)
        if end <= len(self.head):
            return bytes(self.head[:end])
        tail_start = self.total - len(self.tail)  # stream position of tail[0]
        start = max(end - self._tail_max, tail_start)
        kept = self.tail[start - tail_start: end - tail_start] if end > start else bytearray()
        cut = end - len(self.head) - len(kept)
        if cut <= 0:
            return bytes(self.head + kept)
        return bytes(self.head) + truncation_note(cut) + bytes(kept)


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_output_limit(value: object, what: str = "output limit") -> int:
    """*value* (``16777216``, ``"64K"``, ``"16M"``, ``"1G"``) as a byte count of at least
    :data:`MIN_OUTPUT_LIMIT`.

    Raises:
        ConfigError: not such a number (the message says what is accepted).
    """
    from .errors import ConfigError  # errors.py uses printable(): imported here, no cycle

    text = str(value).strip().upper()
    unit = text[-1:] if text[-1:] in _UNITS else ""
    digits = text[: len(text) - len(unit)]
    number = int(digits) * _UNITS[unit] if digits.isdigit() and not isinstance(value, bool) else -1
    if number < MIN_OUTPUT_LIMIT:
        raise ConfigError(
            f"{what} {value!r} is not accepted: give a number of bytes of at least "
            f"{MIN_OUTPUT_LIMIT}, optionally with K, M or G (e.g. 64M)"
        )
    return number
