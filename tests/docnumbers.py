"""The check that numbers quoted in a docs page come from the data behind it (shared by the figure tests).

A quoted decimal matches a data value that rounds to it at the same number of decimals (a percentage is
a fraction: two more decimals); a number in e-notation matches at the same significant digits."""
from __future__ import annotations

import re

NUMBER = re.compile(r"(?<![\w.=])([−-]?\d+\.\d+(?:e[−-]?\d+)?|\d+e[−-]\d+)(%?)")


def numbers_in(x, out: list) -> list:
    """Every number in a JSON value (strings such as "RL β=3.25" included), appended to out."""
    if isinstance(x, dict):
        for v in x.values():
            numbers_in(v, out)
    elif isinstance(x, list):
        for v in x:
            numbers_in(v, out)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        out.append(float(x))
    elif isinstance(x, str):
        out += [float(m) for m in re.findall(r"-?\d+\.\d+|-?\d+", x)]
    return out


def quoted_matches(text: str, percent: bool, values) -> bool:
    """Does some data value round to the quoted number?"""
    t = text.replace("−", "-")
    q = float(t) / (100 if percent else 1)
    if "e" in t:
        sig = len(t.split("e")[0].replace("-", "").replace(".", "").lstrip("0")) or 1
        return any(float(f"{abs(v):.{sig - 1}e}") == abs(q) for v in values)
    dec = len(t.split(".")[1]) + (2 if percent else 0)
    return any(round(abs(v), dec) == round(abs(q), dec) for v in values)


def quoted_missing(text: str, data) -> list[str]:
    """The numbers quoted in text that no value of data rounds to."""
    values = numbers_in(data, [])
    return [m.group(0) for m in NUMBER.finditer(text) if not quoted_matches(m.group(1), bool(m.group(2)), values)]
