"""What a grid will cost: predicted device time from measured throughputs and a reference table.

Nothing here knows a method. A reference table that was run (the committed `cpu` table, by
default) says, per attack, how long its poison set took and, per defense, how long a victim
took (``timing`` in every record), on the machine whose throughputs ``reference`` holds. A cell
of another table costs what its reference cell cost, scaled by the number of images, the
epochs and the ratio of the two machines' throughputs for the models involved:

    victim:  fit_s(defense) × (n × epochs) / (n_ref × epochs_ref) × train_ref / train_here
    poison:  poison_s(attack) × n / n_ref × pgd_ref / pgd_here

Throughputs are ``images_per_s`` by name (``train-<model>``, ``pgd-<model>``), as
tests/benchmarks/test_bench_device.py measures them (``uebench run --dry-run --throughputs``
takes its pytest-benchmark JSON, or a JSON of ``{"images_per_s": {...}}``). The estimate keeps
each method at its reference settings: a preset that runs a method longer (the paper's EM
rounds, TAP's 250 steps) costs more than predicted, and the output says which cells had no
reference at all.
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from uebench.leaderboard import collect, shown_path
from uebench.plan import CLEAN, Plan
from uebench.ratio import FULL, ratio_of
from uebench.records import Record, TableInfo
from uebench.registry import UserError


PROJECT = Path(__file__).resolve().parents[1]           # uebench's source tree (the checkout it runs from)
THROUGHPUTS = PROJECT / "leaderboard" / "throughputs"   # measured images/s per device kind, committed


@dataclass
class Throughputs:
    device: str
    images_per_s: dict[str, float]
    threads: int | None = None

    def rate(self, kind: str, model: str) -> float:
        name = f"{kind}-{model}"
        if name not in self.images_per_s:
            raise MissingRate(f"the throughputs of {self.device} lack {name}; measure them with "
                              f"python -m pytest -m benchmark --benchmark-enable tests/benchmarks/test_bench_device.py")
        return self.images_per_s[name]


class MissingRate(UserError):
    """No measured throughput for a model: a plan says so instead of pricing it."""


def load_throughputs(path: Path) -> Throughputs:
    """A pytest-benchmark JSON of test_bench_device.py, or ``{"device", "images_per_s", "threads"}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read throughputs {path} ({err}); give the --benchmark-json of "
                        f"tests/benchmarks/test_bench_device.py") from err
    if "benchmarks" in data:
        infos = [b["extra_info"] for b in data["benchmarks"] if "throughput" in b.get("extra_info", {})]
        return Throughputs(infos[0]["device"] if infos else "?", {i["throughput"]: i["images_per_s"] for i in infos})
    return Throughputs(data.get("device", "?"), dict(data["images_per_s"]), data.get("threads"))


@dataclass
class Estimate:
    poison_s: float = 0.0
    cells_s: float = 0.0
    unknown: list[str] = field(default_factory=list)     # pieces without a reference measurement
    reference: str = ""

    @property
    def total_h(self) -> float:
        return (self.poison_s + self.cells_s) / 3600


def find_reference(folders: list[Path], table_id: str | None, protocol: str | None = None
                   ) -> tuple[Path, list[Record]] | None:
    """The folder and finished records of table ``table_id`` (None: the `cpu` table of ``protocol``,
    the one of the preset's own victim, not a cross-architecture table beside it), from the first
    of ``folders`` that has it."""
    from uebench.presets import PRESETS
    for folder in folders:
        for (_, found), entries in collect(Path(folder))[0].items():
            table = entries[0][1].table
            the_cpu_table = (table.preset == "cpu" and table.protocol == protocol and table.surrogate is None
                             and table.model == PRESETS["cpu"]["model"])
            if found == table_id or (table_id is None and the_cpu_table):
                return Path(folder), [r for _, r in entries if r.status == "ok"]
    return None


def reference_records(results_dir: Path, table_id: str) -> list[Record]:
    found = find_reference([results_dir], table_id)
    if found is None:
        raise UserError(f"no reference table {table_id!r} under {results_dir}; pass --reference-table")
    return found[1]


def report(plan: Plan, device_kind: str, throughputs: Path | None, table_id: str | None, results_dir: Path) -> None:
    """Say on stderr what ``plan`` builds and its predicted device time: this device's throughputs
    (``throughputs``, else THROUGHPUTS/<kind>.json) against those of the reference table's machine,
    that table (``table_id``, else the `cpu` table of the plan's protocol) read from ``results_dir``,
    else from the project's own results/, so ``uebench plan`` prices a grid from any folder."""
    def say(text: str) -> None:
        print(f"uebench: {text}", file=sys.stderr)

    shared = {defense.folder for defense, _ in plan.shared_models()}
    say(f"to build: {len({attack.folder for attack, _ in plan.poison_sets()})} poison set(s), {len(shared)} shared "
        f"model(s) ({', '.join(sorted(shared)) or 'none'}), {len(plan.pending)} cell(s)")
    here, reference_file = Path(throughputs or THROUGHPUTS / f"{device_kind}.json"), THROUGHPUTS / "cpu.json"
    missing = next((f for f in (here, reference_file) if not f.exists()), None)
    if missing:
        say(f"no cost estimate: {missing} is missing (measure with tests/benchmarks/test_bench_device.py; "
            f"see README, 'The gpu table')")
        return
    found = find_reference(list(dict.fromkeys([Path(results_dir), PROJECT / "results"])), table_id,
                           plan.config.protocol)
    if found is None:
        if table_id:
            raise UserError(f"no reference table {table_id!r} under {results_dir} or {PROJECT / 'results'}")
        say("no cost estimate: no `cpu` table to scale from under the results folder or the project's results/ "
            "(pass --reference-table)")
        return
    rates, reference_rates = load_throughputs(here), load_throughputs(reference_file)
    folders = list(dict.fromkeys([Path(results_dir), PROJECT / "results"]))
    others = tables_like(folders, found[1][0].table)
    if here.resolve() == reference_file.resolve():      # the reference machine: victims it ran tables of
        rates = with_victim_rates(rates, found[1], others)
    try:
        cost = estimate(plan, found[1], reference_rates, rates, poisons_from=others)
    except MissingRate as err:          # a victim never benchmarked (uebench list models): the plan stands
        say(f"no cost estimate: {err}")
        return
    say(f"predicted {cost.total_h:.1f} device-hours on {rates.device} (poison sets {cost.poison_s / 3600:.1f} h, "
        f"cells {cost.cells_s / 3600:.1f} h), scaled from {cost.reference} in {shown_path(found[0])}/; "
        f"each method at its reference settings")
    if cost.unknown or shared:
        say(f"not in the estimate (no reference timing): "
            f"{', '.join(cost.unknown + [f'shared model {d}' for d in sorted(shared)])}")


def estimate(plan: Plan, reference: list[Record], reference_rates: Throughputs, rates: Throughputs,
             poisons_from: list[Record] = ()) -> Estimate:
    """Predicted seconds for the pending poison sets and cells of ``plan``.

    A poison set is crafted once whichever table asks for it (the cache is keyed on the crafting
    model, not the victim or the protocol), so an attack the reference table lacks is timed from
    ``poisons_from``: other tables' records crafted on the same model, at their own size. The
    poisons are priced at the crafting model's rate (``--surrogate``, else the victim), the cells
    at the victim's; a poison ratio below 1 costs what the whole split does (the attack crafts on
    all of it, the victim trains on as many images)."""
    reference = [r for r in reference if ratio_of(r) == FULL]   # timings of whole protected splits
    ref = reference[0].table
    n_ref, epochs_ref, model_ref = ref.split["n_protected"], ref.train["epochs"], ref.model
    n = len(plan.splits.protected)
    fit = _medians(reference, lambda r: r.defense.folder, "fit_s")
    crafting, crafting_ref = plan.config.surrogate or plan.config.model, ref.surrogate or ref.model
    poison = {a: s / n_ref for a, s in _medians([r for r in reference if r.attack.name != CLEAN],
                                                 lambda r: r.attack.folder, "poison_s").items()}
    for table in _by_table([r for r in poisons_from if (r.table.surrogate or r.table.model) == crafting_ref
                            and r.attack.name != CLEAN]):
        per_image = _medians(table, lambda r: r.attack.folder, "poison_s")
        for attack, seconds in per_image.items():
            poison.setdefault(attack, seconds / table[0].table.split["n_protected"])
    train_scale = (n * plan.config.train.epochs) / (n_ref * epochs_ref) * \
        reference_rates.rate("train", model_ref) / rates.rate("train", plan.config.model)
    pgd_scale = n * reference_rates.rate("pgd", crafting_ref) / rates.rate("pgd", crafting)
    out = Estimate(reference=f"{ref.id} ({ref.preset}: {n_ref} images × {epochs_ref} epochs, {model_ref}, "
                             f"on {reference_rates.device})")
    for attack in {method.folder for method, _ in plan.poison_sets()}:
        if attack in poison:
            out.poison_s += poison[attack] * pgd_scale
        else:
            out.unknown.append(f"poison set {attack}")
    for cell in plan.pending:
        if cell.defense.folder in fit:
            out.cells_s += fit[cell.defense.folder] * train_scale
        else:
            out.unknown.append(f"cell {cell.attack.folder} × {cell.defense.folder}")
    return out


def with_victim_rates(rates: Throughputs, reference: list[Record], others: list[Record]) -> Throughputs:
    """``rates`` plus ``train-<model>`` for the victims no benchmark measured but a table on the
    same machine trained (a cross-architecture table): the reference victim's rate times how much
    longer that table's no-defense cells took per image and epoch than the reference table's."""
    def seconds_per_image_epoch(records: list[Record]) -> float | None:
        times = [r.timing["fit_s"] / (r.table.split["n_protected"] * r.table.train["epochs"])
                 for r in records if r.defense.name == "none" and "fit_s" in r.timing]
        return statistics.median(times) if times else None

    ref_model, ref_s = reference[0].table.model, seconds_per_image_epoch(reference)
    added = dict(rates.images_per_s)
    for table in _by_table(others):
        model, seconds = table[0].table.model, seconds_per_image_epoch(table)
        if f"train-{model}" not in added and seconds and ref_s and f"train-{ref_model}" in added:
            added[f"train-{model}"] = added[f"train-{ref_model}"] * ref_s / seconds
    return Throughputs(rates.device, added, rates.threads)


def tables_like(folders: list[Path], like: TableInfo) -> list[Record]:
    """The finished records of every table under ``folders`` with the preset and image shape of
    ``like`` (the reference): the tables whose timings can be compared with its own."""
    return [r for folder in folders if Path(folder).is_dir()
            for entries in collect(Path(folder))[0].values() for _, r in entries
            if r.status == "ok" and r.table.preset == like.preset and r.table.dataset["shape"] == like.dataset["shape"]]


def _by_table(records: list[Record]) -> list[list[Record]]:
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.table.id, []).append(r)
    return list(groups.values())


def _medians(records: list[Record], key, timing: str) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for r in records:
        if timing in r.timing:
            groups.setdefault(key(r), []).append(r.timing[timing])
    return {k: statistics.median(v) for k, v in groups.items()}
