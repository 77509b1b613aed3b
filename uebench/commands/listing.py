"""`uebench list`: every attack, defense and detector, with its threat model, target and paper; and
`uebench list models`: every victim architecture, its parameter count, step time and paper."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    lst = sub.add_parser("list", help="list registered attacks, defenses, detectors and models")
    lst.add_argument("kind", nargs="?", choices=["attacks", "defenses", "detectors", "models"], help="only this kind")
    lst.add_argument("--time", action="store_true", help="models: measure each one's step time on this machine "
                     "(batch 256, the current thread count; a minute or two)")
    lst.add_argument("--plugin", action="append", default=[], help="also load this plugin file or module")


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from uebench.budget import declared_threat_model
    from uebench.registry import ATTACKS, DEFENSES, PluginError, load_plugin

    if args.kind == "models":
        return list_models(args.time)
    broken_plugins = []
    for plugin in args.plugin:
        try:
            load_plugin(plugin)
        except PluginError as err:
            broken_plugins.append(str(err))
    # detectors register as defenses (their names contain "detect") and apply to --protocol detection
    defenses = [entry for entry in DEFENSES.status() if not is_detector(entry[1])]
    detectors = [entry for entry in DEFENSES.status() if is_detector(entry[1])]
    for kind, entries in (("attacks", ATTACKS.status()), ("defenses", defenses), ("detectors", detectors)):
        if args.kind and args.kind != kind:
            continue
        rows = []
        for name, cls, problem in entries:
            if cls is None:
                rows.append([name, "BROKEN", "", "", problem])
                continue
            if kind == "attacks":
                try:
                    threat = str(declared_threat_model(cls(), (3, 32, 32)))
                except Exception as err:   # a plugin whose defaults do not build
                    threat = f"? ({type(err).__name__})"
                rows.append([name, "ok", threat, release_listing(name, cls), cls.target, cls.describe()])
            else:
                rows.append([name, "ok", "", "/".join(cls.protocols), cls.describe()])
        headers = (["name", "status", "threat model (32×32×3)", "released as uint8 by", "target", "paper"]
                   if kind == "attacks" else ["name", "status", "", "protocols", "paper"])
        print(f"{kind} ({len(rows)})")
        print(tabulate(rows, headers=headers, tablefmt="simple"))
        print()
    for problem in broken_plugins:
        print(f"BROKEN plugin: {problem}")
    return 0


def release_listing(name: str, cls: type) -> str:
    """How an attack's poison becomes uint8 images (uebench/release.py), for the listing."""
    from uebench.api import Attack
    from uebench.registry import ATTACKS
    from uebench.release import FLOAT_UNTIL_RECOMPUTED
    if name in FLOAT_UNTIL_RECOMPUTED:
        return "float (until recomputed)"
    if any("release" in vars(c) for c in cls.__mro__ if c is not Attack):
        return cls.release
    # a built-in that declares no rule exports in its own generate (its docstring says how)
    return "in generate" if cls.__module__.startswith(ATTACKS.builtin_package + ".") else f"{cls.release} (default)"


def is_detector(cls) -> bool:
    from uebench.api import Detector
    return isinstance(cls, type) and issubclass(cls, Detector)


def list_models(measure: bool = False) -> int:
    """Every family at its published width and at its CPU width (uebench.victims.CPU_WIDTHS)."""
    from tabulate import tabulate

    from uebench.models import create_model
    from uebench.victims import CPU_WIDTHS, FAMILIES, STEP_SECONDS, parameter_count, step_seconds

    rows = []
    for family, info in FAMILIES.items():
        names = [family] + ([f"{family}-w{CPU_WIDTHS[family]:g}"] if family in CPU_WIDTHS else [])
        for name in names:
            params = parameter_count(create_model(name, 3, 10))
            seconds = step_seconds(name) if measure else STEP_SECONDS.get(name)
            rows.append([name, f"{params / 1e6:.2f}M", f"{seconds:.2f}" if seconds else "",
                         f"{470 * seconds / 60:.0f}" if seconds else "",
                         "cpu" if name != family or family == "smallcnn" else "", info.reference, info.source])
    print(f"models ({len(FAMILIES)} families; any of them as NAME-wF for width F, e.g. resnet50-w0.25)")
    print(tabulate(rows, headers=["name", "params", "s/step", "cpu cell min", "scale", "paper", "built from"],
                   tablefmt="simple"))
    how = "measured now, at this process's thread count" if measure else \
        "measured on the 2-core Xeon of the cpu table at 1 thread, others using the cores (±50 %; --time re-measures)"
    print(f"\nparams at 3×32×32 and 10 classes; s/step: one SGD forward+backward step on 256 images, {how}; "
          f"cpu cell min: 470 such steps (8,000 images × 15 epochs), training only")
    return 0
