"""How uebench names and writes what it keeps: content keys, code fingerprints, atomic files.

Every file uebench writes (records, cache entries, the leaderboard) goes through
:func:`write_atomic`; every cache key is a :func:`content_key`, with the data it was made from
named by a :func:`tensor_fingerprint`; every record and cache entry names the code that made it
with a :func:`code_fingerprint`.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def content_key(obj: Any) -> str:
    """A stable hash of a JSON-able description (used for every cache key)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


FINGERPRINT_VERSION = 2   # 1: the source file's bytes; 2: its code, as below


def code_fingerprint(*objects: Any, version: int = FINGERPRINT_VERSION) -> str:
    """A hash of the code of the modules that define ``objects``, plus uebench's version: what
    a cache entry or a record was made by. Editing a method's code (a plugin's ``generate``,
    say) changes it, so what the old code made is never served as the new one's.

    Version 2 hashes the module's syntax tree without its docstrings and its classes' ``presets``
    (the values a preset picks are in every record's hyperparameters, compared on their own),
    and with each import reduced to the names it binds: a docstring, a comment, the layout, a
    preset or the module an import comes from can change without remaking anything, while any
    change to what the code does (or to which names it imports) remakes it. Version 1 hashed the file's bytes; records made
    before version 2 carry it (see ``records.SCHEMA_VERSION``)."""
    from uebench import __version__
    digest = hashlib.sha256(__version__.encode())
    for obj in objects:
        module = inspect.getmodule(obj)
        try:
            source = Path(inspect.getsourcefile(module)).read_bytes()
        except (TypeError, OSError):      # no source file (built in the interpreter): its name stands in
            digest.update(f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', obj)}".encode())
            continue
        digest.update(source if version == 1 else normalized_code(source).encode())
    return digest.hexdigest()[:12]


def method_fingerprint(cls: type) -> str:
    """:func:`code_fingerprint` of a method class: its module's code and that of every module it
    inherits method code from (SEM subclasses REM, so an edit of ``rem.py`` can change what SEM
    computes). The core (``uebench`` itself, whose changes do not remake records) and the standard
    classes are left out, so a class with no method bases has its module's fingerprint alone."""
    inherited = [base for base in cls.__mro__[1:] if base.__module__ not in (cls.__module__, "builtins")
                 and not _is_core(base.__module__)]
    return code_fingerprint(cls, *inherited)


def _is_core(module: str) -> bool:
    return module == "uebench" or (module.startswith("uebench.")
                                   and not module.startswith(("uebench.attacks.", "uebench.defenses.")))


def source_fingerprint(source: bytes, version: int = FINGERPRINT_VERSION) -> str:
    """:func:`code_fingerprint` of one module whose source is ``source`` (e.g. an older revision's)."""
    from uebench import __version__
    digest = hashlib.sha256(__version__.encode())
    digest.update(source if version == 1 else normalized_code(source).encode())
    return digest.hexdigest()[:12]


def normalized_code(source: str | bytes) -> str:
    """The module's syntax tree, without docstrings and with imports reduced to their bound names."""
    tree = _Normalize().visit(ast.parse(source))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


class _Normalize(ast.NodeTransformer):
    def generic_visit(self, node):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]          # the docstring
        return super().generic_visit(node)

    def visit_ClassDef(self, node):
        # a method's `presets` only choose hyperparameter values, which every record stores and
        # is compared on by itself: a new or changed preset leaves the other tables' records valid
        node.body = [stmt for stmt in node.body if not assigns(stmt, "presets")] or [ast.Pass()]
        return self.generic_visit(node)

    def visit_Import(self, node):
        return ast.Expr(ast.Constant("import " + ",".join(sorted((a.asname or a.name) for a in node.names))))

    visit_ImportFrom = visit_Import


def assigns(stmt: ast.stmt, name: str) -> bool:
    """Whether ``stmt`` is ``name = ...`` or ``name: T = ...``."""
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


def tensor_fingerprint(*tensors: Any) -> str:
    """A content hash of tensors (shape, dtype and bytes of each): which data a model or a cache
    entry was made from."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def write_atomic(path: Path, content: str | bytes | Callable[[Path], None]) -> None:
    """The one way uebench writes a file: to a temporary file beside it, flushed to disk,
    then renamed over ``path``, so a reader (or a process killed mid-write) never sees half
    a file, and two writers of the same file leave one of their files whole. ``content`` is
    text, bytes, or a function that writes the temporary path it is given (``torch.save``).
    Temporary files are named ``.<name>.*.tmp``; those of a killed writer are removed by
    the next run (``workers.remove_stale_temp_files``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(content):
            os.close(fd)
            content(Path(tmp))
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
