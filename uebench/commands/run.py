"""`uebench run` (and `uebench plan`, its dry run): a grid from the command line to the records."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from uebench.commands import DEFAULT_LEADERBOARD, DEFAULT_RESULTS, leaderboard_path
from uebench.commands.board import report_unreadable
from uebench.ratio import parse_ratios, ratio_text
from uebench.registry import UserError


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="run attacks x defenses x seeds and write records + the leaderboard")
    run.add_argument("--attacks", help="'all', a comma list, or wildcards (em*,tap); without --attacks and "
                     "--defenses: the one-minute first grid")
    run.add_argument("--defenses", help="'all', a comma list, or wildcards (default: all, once --attacks is given)")
    run.add_argument("--preset", default="demo", help="smoke | demo (default) | cpu | gpu | paper")
    run.add_argument("--dataset", help="digits, fashion-mnist, cifar10, cifar100, svhn, npz:PATH, imagefolder:PATH")
    run.add_argument("--data-root", help="where torchvision datasets live (default ~/.cache/uebench/data)")
    run.add_argument("--download", action="store_true", help="allow downloading a torchvision dataset")
    run.add_argument("--seeds", type=str, help="e.g. 0,1,2 or 0-2 (default: the preset's)")
    run.add_argument("--poison-ratio", type=str, metavar="R[,R...]", help="the poisoned fraction(s) of the "
                     "protected split, each in (0, 1], e.g. 0.2,0.5,0.8,1.0 (default 1: all of it); below 1 the rest "
                     "stays clean, and a clean-part row trains on the clean part alone")
    run.add_argument("--model", help="victim (and default surrogate) architecture: smallcnn, resnet18, resnet50, "
                     "vgg16, mobilenetv2, densenet121, vit-tiny, or NAME-wF for width F (uebench list models)")
    run.add_argument("--surrogate", help="the architecture every attack that trains one crafts its poison on "
                     "(unless its own surrogate/arch is set); default: the victim (--model). "
                     "A cross-architecture table: --model X --surrogate smallcnn")
    run.add_argument("--protocol", help="supervised (default) | contrastive | detection (the columns are detectors, "
                     "uebench list detectors; --defenses picks them): see uebench/protocols/")
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
                     "GPUs, the cluster's capacity on Ray); local workers are capped at the CPU cores and the tasks")
    run.add_argument("--backend", default="loky", help="loky (local worker processes) | ray")
    run.add_argument("--ray-address", help="with --backend ray: the cluster to use, e.g. auto or HOST:6379 "
                     "(default: $RAY_ADDRESS, else start a local Ray instance)")
    run.add_argument("--retries", type=int, default=2, help="times a task whose worker died is run again "
                     "before its cell is recorded as failed (default 2)")
    run.add_argument("--cell-timeout", type=float, metavar="SECONDS", help="fail a task (a cell, a poison set, a "
                     "defense's shared model) whose method code runs longer, and free its claim (default: no limit)")
    run.add_argument("--force", action="store_true", help="recompute finished cells")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--dry-run", action="store_true", help="print the plan and its predicted cost, and exit "
                     "(also: uebench plan ...)")
    run.add_argument("--throughputs", type=Path, help="with --dry-run: this device's measured throughputs (default: "
                     "leaderboard/throughputs/<cpu|cuda>.json of uebench's checkout; "
                     "tests/benchmarks/test_bench_device.py makes one)")
    run.add_argument("--reference-table", help="with --dry-run: the table whose timings are scaled (default: the "
                     "`cpu` table of the same protocol under --results-dir, else in uebench's checkout's results/)")

    # `uebench plan ...` is `uebench run --dry-run ...`: the same flags (copied from run's, so added above)
    sub.add_parser("plan", parents=[run], add_help=False, help="what `run` with the same flags would build, and "
                   "its predicted device-hours; works before the data is downloaded",
                   description="List the pending cells, poison sets and shared models of a grid and predict its "
                   "device time (uebench run --dry-run). Without the dataset on disk, a torchvision set is planned "
                   "from its known sizes.")


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
    """``0,1,2``, ``0-4`` (0 to 4) or both (``0-2,7``); an empty or downward range is an error
    (and so is a seed given twice, or one outside 0..MAX_SEED: presets.validate)."""
    from uebench.presets import MAX_SEED
    seeds = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not (lo.isdecimal() and (hi.isdecimal() or not dash)):
            raise UserError(f"--seeds expects numbers like 0,1,2 or 0-4, got {text!r}")
        lo, hi = int(lo), int(hi) if dash else int(lo)
        if not lo <= hi <= min(MAX_SEED, lo + 999):
            raise UserError(f"--seeds {part.strip()}: each seed lies in 0..{MAX_SEED}, and a range runs upwards "
                            f"over at most 1,000 seeds (e.g. 1-3)")
        seeds += range(lo, hi + 1)
    return seeds


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
        args.seeds = FIRST_GRID["seeds"] if args.seeds is None else args.seeds
    args.attacks, args.defenses = args.attacks or "all", args.defenses or "all"
    overrides = {k: getattr(args, k) for k in ("model", "surrogate", "protocol", "epochs", "batch_size", "lr", "weight_decay",
                                                "n_reference", "n_protected", "train_subset", "test_subset", "cell_threads",
                                                "schedule", "crop_fill", "compile") if getattr(args, k) is not None}
    spec = RunSpec(attacks=args.attacks, defenses=args.defenses, preset=args.preset, dataset=args.dataset,
                   seeds=parse_seeds(args.seeds) if args.seeds is not None else None, overrides=overrides,
                   attack_params=parse_params(args.attack_param, "-A"),
                   defense_params=parse_params(args.defense_param, "-D"),
                   results_dir=args.results_dir, cache_dir=args.cache_dir,
                   data_root=str(Path(args.data_root).expanduser().resolve()) if args.data_root else None,
                   download=args.download, device=args.device, jobs=args.jobs, backend=args.backend,
                   retries=args.retries, cell_timeout=args.cell_timeout, ray_address=args.ray_address, force=args.force,
                   progress=not args.quiet, plugins=args.plugin,
                   poison_ratios=parse_ratios(args.poison_ratio) if args.poison_ratio is not None else None)
    check_worker_flags(spec)
    plan = make_plan(spec, without_data=args.dry_run)
    if first_grid:
        print(f"uebench: the first grid (--attacks {args.attacks} --defenses {args.defenses} --seeds {args.seeds}); "
              f"name --attacks or --defenses for another", file=sys.stderr)
    for path in plan.corrupt:
        print(f"uebench: corrupt record {path} (truncated or failing its checksum); its cell runs again",
              file=sys.stderr)
    for attack in {cell.attack.folder: cell.attack for cell in plan.pending}.values():
        for warning in attack.warnings:
            print(f"uebench: warning: attack {attack.folder}: {warning}", file=sys.stderr)
    if plan.table_id is None:
        print(f"uebench: {plan.config.dataset} is not on disk: planned from its known sizes "
              f"({len(plan.splits.protected)} protected / {len(plan.splits.reference)} reference images), every cell "
              f"pending; its table id is known once the data is (--download)", file=sys.stderr)
    print(f"uebench: {plan.dataset.name}, table {plan.table_id or '?'}: {len(plan.cells)} cells, "
          f"{len(plan.pending)} to run, {len(plan.cells) - len(plan.pending)} already finished", file=sys.stderr)
    if args.dry_run:
        for cell in plan.pending:
            ratio = "" if cell.ratio == 1 else f"\tratio {ratio_text(cell.ratio)}"
            print(f"{cell.attack.folder}\t{cell.defense.folder}\tseed {cell.seed}{ratio}")
        from uebench.cost import report
        from uebench.runner import resolve_device
        report(plan, resolve_device(args.device).type, args.throughputs, args.reference_table, args.results_dir)
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
