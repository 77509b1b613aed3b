"""Command line: ``uebench run``, ``uebench list``, ``uebench leaderboard``.

Exit codes: 0 all cells finished, 1 some cell failed (see its record) or, for ``leaderboard``,
some record is unreadable or the markdown out of date (``--check``), 2 bad input (one line on
stderr saying what to do; nothing written).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from uebench.registry import UserError

DEFAULT_RESULTS = Path("results")
DEFAULT_LEADERBOARD = Path("leaderboard/LEADERBOARD.md")


def leaderboard_path(results_dir: Path, given: Path | None) -> Path:
    """Where the markdown goes: as given; else the project's leaderboard for the project's
    results, and RESULTS_DIR/LEADERBOARD.md for any other results folder (so a scratch or
    cluster run never overwrites the committed table)."""
    if given is not None:
        return given
    return DEFAULT_LEADERBOARD if Path(results_dir) == DEFAULT_RESULTS else Path(results_dir) / "LEADERBOARD.md"


def parse_value(text: str) -> Any:
    """Hyperparameter values from the command line: 8/255, 0.1, 10, true, none, 1,2,2,2, text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.count("/") == 1:                        # 8/255, 0.8/255
        top, bottom = text.split("/")
        try:
            return float(top) / float(bottom)
        except (ValueError, ZeroDivisionError):
            pass
    if "," in text:
        return tuple(parse_value(part) for part in text.split(","))
    return text


def parse_params(items: list[str], flag: str) -> dict[str, dict[str, Any]]:
    """``["em.rounds=5", "em.eps=8/255"]`` -> ``{"em": {"rounds": 5, "eps": 0.0313...}}``."""
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not (sep and dot and method and name):
            raise UserError(f"{flag} expects METHOD.NAME=VALUE (e.g. {flag} em.rounds=5), got {item!r}")
        params.setdefault(method, {})[name.replace("-", "_")] = parse_value(value)
    return params


def parse_seeds(text: str) -> list[int]:
    try:
        if "-" in text and "," not in text:          # 0-2 means 0,1,2
            lo, hi = text.split("-")
            return list(range(int(lo), int(hi) + 1))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds expects numbers like 0,1,2 or 0-4, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):   # bad flags: one line, exit code 2
        raise UserError(f"{message} (see '{self.prog} --help')")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown flag points to the help of the command it was given to."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = f"{self.prog} {parsed.command}" if getattr(parsed, "command", None) else self.prog
            raise UserError(f"unrecognized arguments: {' '.join(extra)} (see '{command} --help')")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="uebench", description="Benchmark unlearnable examples against countermeasures.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="run attacks x defenses x seeds and write records + the leaderboard")
    run.add_argument("--attacks", help="'all', a comma list, or wildcards (em*,tap); without --attacks and "
                     "--defenses: the one-minute first grid")
    run.add_argument("--defenses", help="'all', a comma list, or wildcards (default: all, once --attacks is given)")
    run.add_argument("--preset", default="demo", help="smoke | demo (default) | cpu | gpu | paper")
    run.add_argument("--dataset", help="digits, fashion-mnist, cifar10, cifar100, svhn, npz:PATH, imagefolder:PATH")
    run.add_argument("--data-root", help="where torchvision datasets live (default ~/.cache/uebench/data)")
    run.add_argument("--download", action="store_true", help="allow downloading a torchvision dataset")
    run.add_argument("--seeds", type=str, help="e.g. 0,1,2 or 0-2 (default: the preset's)")
    run.add_argument("--model", help="victim (and default surrogate) architecture: smallcnn | resnet18")
    run.add_argument("--protocol", help="supervised | contrastive")
    for flag, kind in [("--epochs", int), ("--batch-size", int), ("--lr", float), ("--weight-decay", float),
                       ("--n-reference", int), ("--n-protected", int), ("--train-subset", int),
                       ("--test-subset", int), ("--cell-threads", int)]:
        run.add_argument(flag, type=kind, help="override the preset's value")
    run.add_argument("--schedule", help="onecycle | cosine | multistep")
    run.add_argument("--compile", action="store_const", const=True, help="torch.compile the victims (GPU, long runs)")
    run.add_argument("--crop-fill", help="what the training crop pads with: zeros | reflect")
    run.add_argument("-A", "--attack-param", action="append", default=[], metavar="ATTACK.NAME=VALUE",
                     help="override an attack hyperparameter, e.g. -A em.rounds=5 -A tap.eps=16/255")
    run.add_argument("-D", "--defense-param", action="append", default=[], metavar="DEFENSE.NAME=VALUE",
                     help="override a defense hyperparameter, e.g. -D at.steps=5")
    run.add_argument("--plugin", action="append", default=[], help="a plugin .py file or module (repeatable)")
    run.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)
    run.add_argument("--cache-dir", type=Path, help="poison and model cache (default RESULTS_DIR/.cache)")
    run.add_argument("--leaderboard", type=Path, help="markdown file to (re)write (default: "
                     f"{DEFAULT_LEADERBOARD} for {DEFAULT_RESULTS}/, else RESULTS_DIR/LEADERBOARD.md)")
    run.add_argument("--no-leaderboard", action="store_true", help="do not rewrite the leaderboard")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--jobs", type=int, help="tasks run at once (default: 1 on CPU, one per GPU with several "
                     "GPUs, the cluster's capacity on Ray)")
    run.add_argument("--backend", default="loky", help="loky (local worker processes) | threading | ray")
    run.add_argument("--ray-address", help="with --backend ray: the cluster to use, e.g. auto or HOST:6379 "
                     "(default: $RAY_ADDRESS, else start a local Ray instance)")
    run.add_argument("--retries", type=int, default=2, help="times a task whose worker died is run again "
                     "before its cell is recorded as failed (default 2)")
    run.add_argument("--force", action="store_true", help="recompute finished cells")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--dry-run", action="store_true", help="print the plan and its predicted cost, and exit "
                     "(also: uebench plan ...)")
    run.add_argument("--throughputs", type=Path, help="with --dry-run: this device's measured throughputs (default "
                     f"{THROUGHPUTS}/<cpu|cuda>.json; tests/benchmarks/test_bench_device.py makes one)")
    run.add_argument("--reference-table", help="with --dry-run: the table whose timings are scaled (default: the "
                     "`cpu` table of the same protocol under --results-dir)")

    lst = sub.add_parser("list", help="list registered attacks and defenses")
    lst.add_argument("kind", nargs="?", choices=["attacks", "defenses"], help="only this kind")
    lst.add_argument("--plugin", action="append", default=[], help="also load this plugin file or module")

    board = sub.add_parser("leaderboard", help="re-render the markdown leaderboard from the records")
    board.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)
    board.add_argument("--out", type=Path, help=f"default: {DEFAULT_LEADERBOARD} for {DEFAULT_RESULTS}/, "
                       "else RESULTS_DIR/LEADERBOARD.md")
    board.add_argument("--check", action="store_true", help="exit 1 if OUT differs from the rendering")
    board.add_argument("--html", type=Path, metavar="DIR", help="also write a static web page (index.html, "
                       "heatmaps, the records it links to) into DIR")

    exp = sub.add_parser("export", help="the tables as csv, json or latex, from the records alone")
    exp.add_argument("--format", default="csv", help="csv (default) | json | latex")
    exp.add_argument("--table", help="only this table id (e.g. supervised-smallcnn-15ep-a99dd5)")
    exp.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)
    exp.add_argument("--out", type=Path, help="write here instead of standard output")

    mig = sub.add_parser("migrate", help="restamp records of an older schema whose code is unchanged")
    mig.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)
    mig.add_argument("--dry-run", action="store_true", help="say what would change and change nothing")
    mig.add_argument("--as-of", metavar="REV", help="compare with the method files at this git revision (their "
                     "code unchanged since, only docstrings, comments or import paths)")
    return parser


# `uebench run` with no grid named: the two reference rows (random noise, which should do nothing,
# and class-wise noise), EM and two shortcuts that show even on 8x8 digits (OPS, AR), under no
# defense and two cheap ones; one seed. About 40 s on 2 cores.
FIRST_GRID = {"attacks": "random-noise,classwise-noise,em,ops,ar", "defenses": "none,iss-jpeg,cutout",
              "seeds": "0"}
NEXT_COMMANDS = """Next:
  uebench run --attacks all --defenses all --jobs 2        # the whole demo grid on digits (420 cells, about 20 min on 2 cores)
  uebench run --preset cpu --dataset cifar10 --download --attacks em,tap,ops --defenses none,iss-gray,iss-jpeg --jobs 2
                                                           # CIFAR-10 at CPU scale (minutes a cell)
  uebench run --preset gpu --dataset cifar10 --download --attacks all --defenses all   # ResNet-18 on one GPU
  uebench list                                             # every attack and defense
The committed CIFAR-10 tables: leaderboard/LEADERBOARD.md"""


def cmd_run(args: argparse.Namespace) -> int:
    from uebench import leaderboard
    from uebench.plan import RunSpec, check_writable, make_plan
    from uebench.runner import check_worker_flags, plan_workers, run

    args.leaderboard = leaderboard_path(args.results_dir, args.leaderboard)
    first_grid = args.attacks is None and args.defenses is None
    if first_grid:   # `uebench run` alone: a grid that finishes in about a minute on 2 cores
        args.attacks, args.defenses = FIRST_GRID["attacks"], FIRST_GRID["defenses"]
        args.seeds = args.seeds or FIRST_GRID["seeds"]
    args.attacks, args.defenses = args.attacks or "all", args.defenses or "all"
    overrides = {k: getattr(args, k) for k in ("model", "protocol", "epochs", "batch_size", "lr", "weight_decay",
                                                "n_reference", "n_protected", "train_subset", "test_subset", "cell_threads",
                                                "schedule", "crop_fill", "compile") if getattr(args, k) is not None}
    spec = RunSpec(attacks=args.attacks, defenses=args.defenses, preset=args.preset, dataset=args.dataset,
                   seeds=parse_seeds(args.seeds) if args.seeds else None, overrides=overrides,
                   attack_params=parse_params(args.attack_param, "-A"),
                   defense_params=parse_params(args.defense_param, "-D"),
                   results_dir=args.results_dir, cache_dir=args.cache_dir,
                   data_root=str(Path(args.data_root).expanduser().resolve()) if args.data_root else None,
                   download=args.download, device=args.device, jobs=args.jobs, backend=args.backend,
                   retries=args.retries, ray_address=args.ray_address, force=args.force,
                   progress=not args.quiet, plugins=args.plugin)
    check_worker_flags(spec)
    plan = make_plan(spec)
    if first_grid:
        print(f"uebench: the first grid (--attacks {args.attacks} --defenses {args.defenses} --seeds {args.seeds}); "
              f"name --attacks or --defenses for another", file=sys.stderr)
    for path in plan.corrupt:
        print(f"uebench: corrupt record {path} (truncated or failing its checksum); its cell runs again",
              file=sys.stderr)
    for attack in {cell.attack.folder: cell.attack for cell in plan.pending}.values():
        for warning in attack.warnings:
            print(f"uebench: warning: attack {attack.folder}: {warning}", file=sys.stderr)
    print(f"uebench: {plan.dataset.name}, table {plan.table_id}: {len(plan.cells)} cells, "
          f"{len(plan.pending)} to run, {len(plan.cells) - len(plan.pending)} already finished", file=sys.stderr)
    if args.dry_run:
        for cell in plan.pending:
            print(f"{cell.attack.folder}\t{cell.defense.folder}\tseed {cell.seed}")
        print_cost(plan, args)
        return 0
    if not args.no_leaderboard:
        check_writable(Path(args.leaderboard).parent, "the leaderboard's folder", "--leaderboard (or --no-leaderboard)")
    workers = plan_workers(spec, plan.config.cell_threads) if plan.pending else None
    if workers:
        print(f"uebench: {workers.describe()}", file=sys.stderr)
    records = run(spec, plan, workers)
    failed = [r for r in records if r.status == "failed"]
    planned = {w for cell in plan.pending for w in cell.attack.warnings}
    for warning in sorted({w for r in records for w in r.warnings} - planned):
        print(f"uebench: warning: {warning}", file=sys.stderr)
    for r in failed:
        print(f"FAILED {r.attack.folder} / {r.defense.folder} / seed {r.seed}: {r.error}", file=sys.stderr)
    if not args.no_leaderboard:
        out = leaderboard.write(args.results_dir, args.leaderboard)
        print(f"uebench: leaderboard written to {out}", file=sys.stderr)
        report_unreadable(args.results_dir)      # records of other grids: said, not this run's failure
    print(f"uebench: {len(records) - len(failed)} cells done, {len(failed)} failed; records in "
          f"{plan.table_dir}", file=sys.stderr)
    if first_grid:
        entries = leaderboard.collect(Path(args.results_dir))[0].get((plan.dataset.name, plan.table_id), [])
        wanted = {(a.folder, d.folder) for a, d in {(c.attack, c.defense) for c in plan.cells}}
        entries = [(path, r) for path, r in entries if (r.attack.folder, r.defense.folder) in wanted]
        if entries:
            print(leaderboard.render_table(entries).split("\n\n![")[0].strip() + "\n")
        print(NEXT_COMMANDS)
    return 1 if failed else 0


THROUGHPUTS = Path("leaderboard/throughputs")   # measured images/s per device kind, committed


def print_cost(plan, args: argparse.Namespace) -> None:
    """The pending poison sets, shared models and cells, and their predicted device time."""
    from uebench.cost import estimate, load_throughputs, reference_records
    from uebench.leaderboard import collect
    from uebench.runner import resolve_device
    poisons = {attack.folder for attack, _ in plan.poison_sets()}
    shared = {defense.folder for defense, _ in plan.shared_models()}
    print(f"uebench: to build: {len(poisons)} poison set(s), {len(shared)} shared model(s) "
          f"({', '.join(sorted(shared)) or 'none'}), {len(plan.pending)} cell(s)", file=sys.stderr)
    kind = resolve_device(args.device).type
    here = args.throughputs or THROUGHPUTS / f"{kind}.json"
    reference_file = THROUGHPUTS / "cpu.json"
    if not here.exists() or not reference_file.exists():
        print(f"uebench: no cost estimate: {here if not here.exists() else reference_file} is missing "
              f"(measure with tests/benchmarks/test_bench_device.py; see README, 'The gpu table')", file=sys.stderr)
        return
    table = args.reference_table or next(
        (table_id for (_, table_id), entries in collect(Path(args.results_dir))[0].items()
         if entries[0][1].table.preset == "cpu" and entries[0][1].table.protocol == plan.config.protocol), None)
    if table is None:
        print("uebench: no cost estimate: no `cpu` table to scale from under the results folder "
              "(pass --reference-table)", file=sys.stderr)
        return
    rates = load_throughputs(here)
    cost = estimate(plan, reference_records(Path(args.results_dir), table), load_throughputs(reference_file), rates)
    print(f"uebench: predicted {cost.total_h:.1f} device-hours on {rates.device} "
          f"(poison sets {cost.poison_s / 3600:.1f} h, cells {cost.cells_s / 3600:.1f} h), scaled from {cost.reference}; "
          f"each method at its reference settings", file=sys.stderr)
    if cost.unknown or shared:
        missing = cost.unknown + [f"shared model {d}" for d in sorted(shared)]
        print(f"uebench: not in the estimate (no reference timing): {', '.join(missing)}", file=sys.stderr)


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


def report_unreadable(results_dir: Path) -> int:
    """Say on stderr which records the leaderboard left out; returns how many."""
    from uebench import leaderboard
    _, unreadable = leaderboard.collect(Path(results_dir))
    for path, why in unreadable:
        print(f"uebench: corrupt record {path} ({why}); re-run the command that made it to redo it, "
              f"or delete the file", file=sys.stderr)
    return len(unreadable)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Exit 1 when the markdown is out of date (--check) or any record is unreadable."""
    from uebench import leaderboard
    args.out = leaderboard_path(args.results_dir, args.out)
    if not Path(args.results_dir).is_dir():
        raise UserError(f"results directory {args.results_dir} does not exist; run 'uebench run' first "
                        f"or pass --results-dir")
    if args.check:
        import os
        link = os.path.relpath(Path(args.results_dir).resolve(), Path(args.out).parent.resolve())
        expected = leaderboard.render(args.results_dir, results_link=Path(link).as_posix())
        current = Path(args.out).read_text() if Path(args.out).exists() else ""
        if report_unreadable(args.results_dir):
            return 1
        if current != expected:
            print(f"uebench: {args.out} is out of date; run 'uebench leaderboard' and commit it", file=sys.stderr)
            return 1
        stale = leaderboard.stale_heatmaps(args.results_dir, args.out)
        if stale:
            print(f"uebench: heatmap(s) {', '.join(stale)} beside {args.out} are missing or out of date; "
                  f"run 'uebench leaderboard' and commit them", file=sys.stderr)
            return 1
        print(f"uebench: {args.out} matches {args.results_dir}", file=sys.stderr)
        return 0
    out = leaderboard.write(args.results_dir, args.out)
    print(f"uebench: leaderboard written to {out}", file=sys.stderr)
    if args.html:
        from uebench.plan import check_writable
        from uebench.site import write_site
        check_writable(args.html, "the web page's folder", "--html")
        print(f"uebench: web page written to {write_site(args.results_dir, args.html)}", file=sys.stderr)
    return 1 if report_unreadable(args.results_dir) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from uebench.export import export
    from uebench.storage import write_atomic
    if not Path(args.results_dir).is_dir():
        raise UserError(f"results directory {args.results_dir} does not exist; run 'uebench run' first "
                        f"or pass --results-dir")
    text = export(args.results_dir, args.format, args.table)
    if args.out:
        from uebench.plan import check_writable
        check_writable(Path(args.out).parent, "the export's folder", "--out")
        write_atomic(args.out, text)
        print(f"uebench: {args.format} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from uebench.migrate import migrate
    if not Path(args.results_dir).is_dir():
        raise UserError(f"results directory {args.results_dir} does not exist; pass --results-dir")
    outcome = migrate(args.results_dir, dry_run=args.dry_run, as_of=args.as_of)
    for path in outcome["stale"]:
        print(f"uebench: {path}: made by other code than its method has now; left as it is (a run redoes it)",
              file=sys.stderr)
    print(f"uebench: {len(outcome['migrated'])} record(s) {'to restamp' if args.dry_run else 'restamped'}, "
          f"{len(outcome['stale'])} stale, {len(outcome['current'])} current, "
          f"{len(outcome['unreadable'])} unreadable", file=sys.stderr)
    return 1 if outcome["unreadable"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:              # `uebench plan ...` is `uebench run --dry-run ...`
        argv = ["run", "--dry-run", *argv[1:]]
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        handler = {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard,
                   "export": cmd_export, "migrate": cmd_migrate}[args.command]
        return handler(args)
    except UserError as err:
        print(f"uebench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("uebench: interrupted; finished cells are kept, re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
