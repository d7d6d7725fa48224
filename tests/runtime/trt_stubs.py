"""Make the installed ``tensorrt-stubs`` (TensorRT 10.x API) readable by mypy.

The stubs as published do not parse: some methods name a parameter ``in`` (a keyword) and one puts a
parameter without default after parameters with defaults.  This copies the three stub files into a
directory, repairing exactly those lines (keyword parameters get a trailing underscore; parameters
after a defaulted one get ``= ...``), so mypy can be pointed at it with ``MYPYPATH``.

Usage (what ``mypy.ini`` expects for a manual run)::

    python tests/runtime/trt_stubs.py build/trt-stubs
    python -m mypy --config-file mypy.ini
"""
import ast
import importlib.util
import keyword
import os
import re
import sys

STUB_FILES = (
    ("tensorrt", "__init__.pyi"),
    ("tensorrt_bindings", "__init__.pyi"),
    ("tensorrt_bindings", "tensorrt.pyi"),
)
DEF_LINE = re.compile(r"^(?P<head>\s*def\s+\w+\()(?P<params>.*)(?P<tail>\)\s*(->.*)?:.*)$")


def installed_stub_root():
    """site-packages directory holding the tensorrt stubs, or None when ``tensorrt-stubs`` is absent."""
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or not spec.origin:
        return None
    root = os.path.dirname(os.path.dirname(spec.origin))
    if not all(os.path.isfile(os.path.join(root, package, name)) for package, name in STUB_FILES):
        return None
    return root


def split_params(text):
    """Split a parameter list at top-level commas."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current))
    return parts


def repair_def_line(line):
    """One ``def`` line with keyword parameter names renamed and missing defaults added."""
    match = DEF_LINE.match(line)
    if not match:
        return line
    fixed, seen_default = [], False
    for param in split_params(match.group("params")):
        name_match = re.match(r"^(\s*)(\w+)(.*)$", param)
        if name_match is None:  # *args, **kwargs, bare *
            fixed.append(param)
            continue
        space, name, rest = name_match.groups()
        if keyword.iskeyword(name):
            name += "_"
        if "=" in rest:
            seen_default = True
        elif seen_default:
            rest += " = ..."
        fixed.append(space + name + rest)
    return match.group("head") + ",".join(fixed) + match.group("tail")


def repair(text, max_fixes=200):
    """Source ``text`` with every line Python cannot parse repaired (see module docstring)."""
    lines = text.split("\n")
    for _ in range(max_fixes):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines)
        except SyntaxError as error:
            index = (error.lineno or 1) - 1
            repaired = repair_def_line(lines[index])
            if repaired == lines[index]:
                raise
            lines[index] = repaired
    raise RuntimeError("too many unparsable lines in the stubs")


def write_repaired_stubs(out_dir, root=None):
    """Write the repaired stubs under ``out_dir``; returns ``out_dir`` (None when stubs are not installed)."""
    root = root or installed_stub_root()
    if root is None:
        return None
    for package, name in STUB_FILES:
        with open(os.path.join(root, package, name), "r", encoding="utf-8") as handle:
            text = repair(handle.read())
        os.makedirs(os.path.join(out_dir, package), exist_ok=True)
        with open(os.path.join(out_dir, package, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    return out_dir


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join("build", "trt-stubs")
    if write_repaired_stubs(target) is None:
        sys.exit("tensorrt-stubs is not installed (pip install tensorrt-stubs)")
    print(target)
