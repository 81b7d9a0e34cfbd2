"""An indented source buffer and the escaping rules for untrusted text in generated code."""
from __future__ import annotations

import contextlib


class Writer:
    def __init__(self, indent: str = "    "):
        self.lines: list[str] = []
        self.level = 0
        self.unit = indent

    def __call__(self, line: str = "") -> "Writer":
        for part in line.split("\n") if line else [""]:
            self.lines.append(self.unit * self.level + part if part else "")
        return self

    @contextlib.contextmanager
    def indent(self, header: str | None = None):
        if header is not None:
            self(header)
        self.level += 1
        try:
            yield self
        finally:
            self.level -= 1

    def text(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"


def escape_docstring(text: str) -> str:
    """Escape text for the inside of a regular (non-raw) triple-quoted string: backslashes,
    the double quotes that could end the string (a run of three or more, or a run at the
    end, before the closing quotes) and non-printable characters; other quotes stay as
    written ("GLU Variants Improve Transformer")."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            start, end = i, i
            while start > 0 and text[start - 1] == '"':
                start -= 1
            while end + 1 < len(text) and text[end + 1] == '"':
                end += 1
            out.append('\\"' if end - start >= 2 or end == len(text) - 1 else '"')
        elif ch == "\n":
            out.append("\n")
        elif ch == "\t":
            out.append("    ")
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
