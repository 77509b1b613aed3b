"""For tests that load plugin files: the registries get back their state afterwards."""
from __future__ import annotations


def sandbox_registries(monkeypatch) -> None:
    """Let a test register methods and load plugins; ``monkeypatch`` undoes it all."""
    from uebench import registry
    for reg in (registry.ATTACKS, registry.DEFENSES):
        reg.discover()
        for attr in ("_entries", "_loaded", "_broken"):
            monkeypatch.setattr(reg, attr, dict(getattr(reg, attr)))
    monkeypatch.setattr(registry, "_LOADED_PLUGINS", set())


def sandboxed_plugin(tmp_path, monkeypatch, source: str, name: str = "plugin") -> str:
    """``source`` written as the plugin file ``tmp_path/NAME.py`` in sandboxed registries; its path."""
    sandbox_registries(monkeypatch)
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return str(path)
