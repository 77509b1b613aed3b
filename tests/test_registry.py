"""Registry: built-ins found in the tree, entry points, file plugins, wildcards, collisions, broken plugins."""
from __future__ import annotations

import importlib
import importlib.resources
import subprocess
import sys
import textwrap

import pytest

from uebench.api import Attack, Defense
from uebench.registry import ATTACKS, DEFENSES, PluginError, Registry, UserError, builtin_entries, load_plugin

PLUGIN_SOURCE = textwrap.dedent('''
    from dataclasses import dataclass
    from uebench.api import Attack, ThreatModel

    @dataclass
    class Brightness(Attack):
        """Adds a constant to every pixel (a toy plugin)."""
        name = "brightness"
        paper = "toy"
        eps: float = 2 / 255

        def threat_model(self):
            return ThreatModel("linf", self.eps)

        def generate(self, x, y, ctx):
            return (x + self.eps).clamp(0, 1)
''')


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real installed distribution (a package plus its .dist-info with entry_points.txt)."""
    site = tmp_path / "site"
    (site / "toyplug").mkdir(parents=True)
    (site / "toyplug" / "__init__.py").write_text(PLUGIN_SOURCE)
    (site / "toyplug" / "broken.py").write_text("raise ImportError('needs a library that is not installed')\n")
    info = site / "toyplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[uebench.attacks]\nbrightness = toyplug:Brightness\nbroken-one = toyplug.broken:Nothing\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for mod in ("toyplug", "toyplug.broken"):
        sys.modules.pop(mod, None)


def test_builtins_are_found_in_the_source_without_an_entry_point():
    assert ("classwise-noise", "uebench.attacks.classwise_noise:ClasswiseNoise") in builtin_entries("uebench.attacks")
    assert ATTACKS.get("classwise-noise").__module__ == "uebench.attacks.classwise_noise"
    assert DEFENSES.get("none").name == "none"
    registry = Registry("attack", "uebench.no-such-group", Attack, builtin_package="uebench.attacks")
    assert "em-classwise" in registry.names()


def test_listing_the_builtins_imports_no_method():
    code = ("import sys; from uebench.registry import ATTACKS, DEFENSES; ATTACKS.names(); DEFENSES.names(); "
            "print(sorted(m for m in sys.modules if m.startswith(('uebench.attacks.', 'uebench.defenses.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package, base", [("uebench.attacks", Attack), ("uebench.defenses", Defense)])
def test_every_method_class_in_the_tree_is_registered(package, base):
    """A new file in attacks/ or defenses/ needs nothing else: each class that names itself is
    registered under that name; one that does not is a base that others build on."""
    registry = ATTACKS if base is Attack else DEFENSES
    folder = importlib.resources.files(package)
    classes = []
    for file in sorted(f.name for f in folder.iterdir() if f.name.endswith(".py") and not f.name.startswith("_")):
        module = importlib.import_module(f"{package}.{file[:-3]}")
        classes += [c for c in vars(module).values()
                    if isinstance(c, type) and issubclass(c, base) and c.__module__ == module.__name__]
    assert len(classes) >= 10
    for cls in classes:
        if "name" in vars(cls) and cls.name:
            assert registry.get(cls.name) is cls, f"{cls.__qualname__} ({cls.name}) is not the registered one"
        else:
            assert cls.__subclasses__(), f"{cls.__module__}:{cls.__qualname__} sets no name and nothing builds on it"


def test_installed_plugin_is_discovered_and_broken_one_is_isolated(installed_plugin):
    registry = Registry("attack", "uebench.attacks", Attack, builtin_package="uebench.attacks")
    assert {"brightness", "broken-one", "random-noise"} <= set(registry.names())
    cls = registry.get("brightness")
    assert cls.__module__ == "toyplug" and cls().eps == pytest.approx(2 / 255)
    with pytest.raises(PluginError, match="broken-one.*needs a library"):
        registry.get("broken-one")
    status = {name: (cls, problem) for name, cls, problem in registry.status()}
    assert status["broken-one"][0] is None and "needs a library" in status["broken-one"][1]
    assert status["random-noise"][0] is not None          # the others still load


def test_file_plugin_registers_with_decorator(tmp_path):
    path = tmp_path / "my_defense.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from uebench import Defense, register_defense

        @register_defense
        @dataclass
        class FilePluginDefense(Defense):
            name = "file-plugin-defense"
            paper = "toy"
    '''))
    load_plugin(str(path))
    assert DEFENSES.get("file-plugin-defense").__name__ == "FilePluginDefense"
    assert "file-plugin-defense" in DEFENSES.select("file-plugin-*")


def test_plugin_file_that_fails_to_import_gives_one_line_error(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import not_a_module_anywhere\n")
    with pytest.raises(PluginError, match="bad.py failed to import: ModuleNotFoundError"):
        load_plugin(str(path))
    with pytest.raises(UserError, match="does not exist"):
        load_plugin(str(tmp_path / "missing.py"))


def test_name_collision_is_an_error():
    registry = Registry("defense", "uebench.no-such-group", Defense)

    class A(Defense):
        name = "dup"

    class B(Defense):
        name = "dup"

    registry.register("dup", A)
    registry.register("dup", A)            # the same object again is fine
    with pytest.raises(PluginError, match="B reuses the defense name 'dup' of .*A; give it another name"):
        registry.register("dup", B)


def test_a_plugin_reusing_a_builtin_name_is_refused_and_the_builtin_kept():
    """Registered before the entry points were read, the plugin used to take the name and leave
    the built-in BROKEN; now it is refused with a message naming both."""
    registry = Registry("attack", "uebench.attacks", Attack, builtin_package="uebench.attacks")   # fresh

    class MyEM(Attack):
        name = "em"

    with pytest.raises(PluginError, match=r"MyEM reuses the attack name 'em' of uebench\.attacks\.em:EM"):
        registry.decorator(MyEM)
    assert registry.get("em").__module__ == "uebench.attacks.em"


def test_a_class_registered_by_its_entry_point_and_its_decorator_is_one_method(installed_plugin):
    registry = Registry("attack", "uebench.attacks", Attack)
    import toyplug
    registry.register("brightness", toyplug.Brightness)     # the decorator of the module its entry point names
    assert registry.get("brightness") is toyplug.Brightness


def test_selection_all_lists_wildcards_and_order():
    names = ATTACKS.names()
    assert ATTACKS.select("all") == [n for n in names if n != "external"]   # it needs a poison file
    assert "external" not in ATTACKS.select("e*")
    assert ATTACKS.select("external,tap") == ["external", "tap"]            # named, it runs
    assert ATTACKS.select("classwise-noise,random-noise") == ["classwise-noise", "random-noise"]
    assert ATTACKS.select("random-*") == ["random-noise"]
    assert ATTACKS.select("*-noise,random-noise") == ["classwise-noise", "random-noise"]   # no duplicates


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UserError, match="did you mean random-noise"):
        ATTACKS.select("random-nosie")
    with pytest.raises(UserError, match="no attack matches 'zz\\*'"):
        ATTACKS.select("zz*")
    with pytest.raises(UserError, match="unknown defense 'nothing-like-this'"):
        DEFENSES.select("none,nothing-like-this")


def test_name_mismatch_between_entry_point_and_class_is_broken():
    registry = Registry("attack", "uebench.no-such-group", Attack)
    registry.register("wrong-name", "uebench.attacks.random_noise:RandomNoise")
    with pytest.raises(PluginError, match="declares name 'random-noise'"):
        registry.get("wrong-name")
