"""`uebench list`: every attack and defense, with its threat model, target and paper."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    lst = sub.add_parser("list", help="list registered attacks and defenses")
    lst.add_argument("kind", nargs="?", choices=["attacks", "defenses"], help="only this kind")
    lst.add_argument("--plugin", action="append", default=[], help="also load this plugin file or module")


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from uebench.budget import declared_threat_model
    from uebench.registry import ATTACKS, DEFENSES, PluginError, load_plugin

    broken_plugins = []
    for plugin in args.plugin:
        try:
            load_plugin(plugin)
        except PluginError as err:
            broken_plugins.append(str(err))
    for kind, registry in (("attacks", ATTACKS), ("defenses", DEFENSES)):
        if args.kind and args.kind != kind:
            continue
        rows = []
        for name, cls, problem in registry.status():
            if cls is None:
                rows.append([name, "BROKEN", "", "", problem])
                continue
            if kind == "attacks":
                try:
                    threat = str(declared_threat_model(cls(), (3, 32, 32)))
                except Exception as err:   # a plugin whose defaults do not build
                    threat = f"? ({type(err).__name__})"
                rows.append([name, "ok", threat, cls.target, cls.describe()])
            else:
                rows.append([name, "ok", "", "/".join(cls.protocols), cls.describe()])
        headers = ["name", "status", "threat model (32×32×3)" if kind == "attacks" else "", 
                   "target" if kind == "attacks" else "protocols", "paper"]
        print(f"{kind} ({len(rows)})")
        print(tabulate(rows, headers=headers, tablefmt="simple"))
        print()
    for problem in broken_plugins:
        print(f"BROKEN plugin: {problem}")
    return 0
