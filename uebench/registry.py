"""Registries of attacks and defenses: built-ins, entry points and local plugin files.

Entries are lazy ``"module:attr"`` strings or classes (registered with the decorators); a
module is imported only when its method is used or listed. Built-ins are found by reading
the source of ``attacks/`` and ``defenses/``: every class there that sets ``name = "..."``
is registered, so adding a method is adding a file. Third-party packages register
through the ``uebench.attacks`` / ``uebench.defenses`` entry-point groups, local files
with ``--plugin``. A plugin that fails to import is recorded as broken with the reason and
never breaks the others. Registering a different object under a taken name is an error.
"""
from __future__ import annotations

import ast
import difflib
import fnmatch
import importlib
import importlib.resources
import importlib.util
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from uebench.api import Attack, Defense
from uebench.storage import assigns


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it as one line and exits with code 2."""


class PluginError(UserError):
    """A plugin could not be loaded."""


# A method's name is a folder of every results table (and part of its cache files' names), so it
# is a plain identifier: lowercase letters, digits, '-' and '.', starting with a letter or digit,
# without '..'. '@' is kept for the folders of a method run with other hyperparameters (em@1a2b3c).
# Names of data (npz-cifar10_subset) and table ids, made from input, follow the wider SEGMENT.
METHOD_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
RESERVED = {"attack": {"clean", "clean-part"}}   # the rows without an attack (ratio.py) have folders of their own


def safe_segment(text: object, pattern: re.Pattern = SEGMENT) -> bool:
    """Whether ``text`` can be one folder or file name under the results folder, as is."""
    return isinstance(text, str) and bool(pattern.fullmatch(text)) and ".." not in text


def did_you_mean(name: str, choices) -> str:
    """``"did you mean a, b? "`` for the choices close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


class Registry:
    def __init__(self, kind: str, group: str, base: type, builtin_package: str | None = None):
        self.kind, self.group, self.base, self.builtin_package = kind, group, base, builtin_package
        self._entries: dict[str, Any] = {}      # name -> class or "module:attr"
        self._loaded: dict[str, type] = {}
        self._broken: dict[str, str] = {}       # name -> reason
        self._discovered = False

    # -- registration ---------------------------------------------------------------
    def register(self, name: str, target: Any) -> None:
        if not safe_segment(name, METHOD_NAME) or name in RESERVED.get(self.kind, ()):
            taken = "".join(f"; {r!r} is taken" for r in sorted(RESERVED.get(self.kind, ())))
            raise PluginError(f"{_where(target)}: {self.kind} name {name!r} is not allowed; set name = \"...\" "
                              f"to 1-64 lowercase letters, digits, '-' and '.' (a letter or digit first, no '..'"
                              f"{taken})")
        self.discover()     # the built-ins and installed plugins first: a file plugin cannot take their names
        old = self._entries.get(name)
        if old is not None and _origin(old) != _origin(target) and self._loaded.get(name) is not target:
            raise PluginError(f"{_origin(target)} reuses the {self.kind} name {name!r} of {_origin(old)}; "
                              f"give it another name (name = \"...\" on the class)")
        self._entries[name] = target
        self._broken.pop(name, None)

    def decorator(self, cls: type) -> type:
        """``@register_attack`` / ``@register_defense``: register a class under its ``name``."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(f"@register_{self.kind} expects a subclass of {self.base.__name__}, got {cls!r}")
        if not cls.name:
            raise PluginError(f"{cls.__name__} has no 'name'; set name = \"...\" on the class")
        self.register(cls.name, cls)
        return cls

    def discover(self) -> None:
        """Find the built-ins and the installed third-party plugins, once."""
        if self._discovered:
            return
        self._discovered = True
        found = builtin_entries(self.builtin_package) if self.builtin_package else []
        found += [(ep.name, ep.value) for ep in entry_points(group=self.group)]
        for name, target in found:
            try:
                self.register(name, target)
            except PluginError as err:
                self._broken[name] = str(err)

    # -- lookup ---------------------------------------------------------------------
    def names(self) -> list[str]:
        self.discover()
        return sorted(set(self._entries) | set(self._broken))

    def get(self, name: str) -> type:
        """The class registered as ``name``, importing it on first use."""
        self.discover()
        if name in self._loaded:
            return self._loaded[name]
        if name in self._broken:
            raise PluginError(f"{self.kind} {name!r} is broken: {self._broken[name]}")
        if name not in self._entries:
            raise UserError(self._unknown(name))
        target = self._entries[name]
        try:
            cls = _import(target) if isinstance(target, str) else target
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{target} is not a subclass of {self.base.__name__}")
            if cls.name != name:
                raise TypeError(f"{target} declares name {cls.name!r}, registered as {name!r}")
            problem = cls.declaration_problem()
            if problem:
                raise TypeError(f"{target}: {problem}")
        except Exception as err:  # isolate the broken plugin, keep the rest usable
            self._broken[name] = f"{type(err).__name__}: {err}"
            raise PluginError(f"{self.kind} {name!r} is broken: {self._broken[name]}") from err
        self._loaded[name] = cls
        return cls

    def status(self) -> list[tuple[str, type | None, str]]:
        """(name, class or None, problem) for every entry, importing each."""
        rows = []
        for name in self.names():
            try:
                rows.append((name, self.get(name), ""))
            except PluginError:
                rows.append((name, None, self._broken.get(name, "unknown error")))
        return rows

    def select(self, spec: str, lists: Callable[[type], bool] | None = None) -> list[str]:
        """Names from ``all``, a comma list, or shell-style wildcards (``em*,tap``); ``lists``:
        which classes ``all`` and wildcards may pick (a table's protocol: detectors or defenses).

        Unknown names and patterns that match nothing raise before any work starts.
        """
        names = self.names()
        chosen: list[str] = []
        for part in [p.strip() for p in spec.split(",") if p.strip()]:
            if part == "all":
                matches = [n for n in names if self._listed(n, lists)]
            elif any(ch in part for ch in "*?["):
                matches = [n for n in fnmatch.filter(names, part) if self._listed(n, lists)]
                if not matches:
                    raise UserError(f"no {self.kind} matches {part!r}; known: {', '.join(names)}")
            elif part in names:
                matches = [part]
            else:
                raise UserError(self._unknown(part))
            chosen += [m for m in matches if m not in chosen]
        if not chosen:
            raise UserError(f"no {self.kind} selected; give names, wildcards or 'all'")
        return chosen

    def _listed(self, name: str, lists: Callable[[type], bool] | None) -> bool:
        """Whether ``all`` and wildcards pick this method (a broken one is kept: planning reports it)."""
        try:
            cls = self.get(name)
        except PluginError:
            return True
        return not getattr(cls, "by_name_only", False) and (lists is None or lists(cls))

    def _unknown(self, name: str) -> str:
        return (f"unknown {self.kind} {name!r}: {did_you_mean(name, self.names())}"
                f"(run 'uebench list {self.kind}s' to see all; "
                f"a plugin file needs --plugin PATH)")


def builtin_entries(package: str) -> list[tuple[str, str]]:
    """``(name, "module:Class")`` for every class in the package's modules that sets
    ``name = "..."`` in its body, read from the source without importing anything."""
    entries = []
    for file in sorted(importlib.resources.files(package).iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".py") or file.name.startswith("_"):
            continue
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.ClassDef):
                name = _declared_name(node)
                if name:
                    entries.append((name, f"{package}.{file.name[:-3]}:{node.name}"))
    return entries


def _declared_name(node: ast.ClassDef) -> str | None:
    """The string a class body assigns to ``name`` (``name = "em"``), if any."""
    for stmt in node.body:
        value = getattr(stmt, "value", None)
        if assigns(stmt, "name") and isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    return None


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def _where(target: Any) -> str:
    """Where a method comes from, for an error: the plugin file of a class, else ``module:attr``."""
    file = getattr(sys.modules.get(getattr(target, "__module__", "")), "__file__", None)
    return f"{file} ({_origin(target)})" if file and not isinstance(target, str) else _origin(target)


def _origin(target: Any) -> str:
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"


ATTACKS = Registry("attack", "uebench.attacks", Attack, builtin_package="uebench.attacks")
DEFENSES = Registry("defense", "uebench.defenses", Defense, builtin_package="uebench.defenses")
register_attack: Callable[[type], type] = ATTACKS.decorator
register_defense: Callable[[type], type] = DEFENSES.decorator


_LOADED_PLUGINS: set[str] = set()


def load_plugin(spec: str) -> None:
    """Import a local plugin: a ``.py`` file path or a module path. Its classes register
    themselves with ``@register_attack`` / ``@register_defense``. Loading the same plugin
    again (every worker does) is a no-op."""
    path = Path(spec)
    key = str(path.resolve()) if path.exists() else spec
    if key in _LOADED_PLUGINS:
        return
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise UserError(f"plugin file {spec} does not exist; give a .py file or an importable module")
            mod_name = f"uebench_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
        _LOADED_PLUGINS.add(key)
    except UserError:
        raise
    except Exception as err:
        raise PluginError(f"plugin {spec} failed to import: {type(err).__name__}: {err}") from err
