"""`fedrec divest REGION [REGION ...] [--run RUN_DIR]`: rebuild a run's global line without those regions.

`--method exact` (default) retrains the remaining regions from the last version the removed ones never touched;
`--method fast` subtracts their kept contributions (`federation.keep_contributions=true`) and calibrates with a
few recovery rounds. Both run on Flower's simulation engine, register the new line in the run's registry (every
version records what was removed, how and from where) and write `divestment.json`. When the run's world holds
the removed region's data (a simulation), the removal test is run too: its own items' signal before and after.
A run of coalition lines is divested line by line (exact or fast): every line the regions shaped is rebuilt.
`--deployment` trains nothing and writes the rebuilt line's run config for the operators (`flwr run`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedrec.commands.parsing import CommandParser, run_command
from fedrec.errors import ConfigError

if TYPE_CHECKING:
    from fedrec.divestment import Divestment
    from fedrec.settings import RunSettings


def build_parser() -> argparse.ArgumentParser:
    """The `fedrec divest` argument parser."""
    parser = CommandParser(prog="fedrec divest",
                           description="Rebuild a run's global line without the given regions (exact or fast).")
    parser.add_argument("regions", nargs="+", help="the region(s) ordered out")
    parser.add_argument("--run", type=Path, default=None,
                        help="the run's output directory (default: the newest under outputs/ and multirun/)")
    parser.add_argument("--method", choices=("exact", "fast"), default="exact",
                        help="exact: retrain without the regions (a complete removal); fast: subtract their kept "
                             "contributions and recover (approximate: the items only they held stay detectable "
                             "in the weights, simulations/README.md)")
    parser.add_argument("--recovery-rounds", type=int, default=None,
                        help="fast: recovery rounds (default: 30%% of what exact would train, at least 1)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: RUN/divest-METHOD-TIME)")
    parser.add_argument("--deployment", action="store_true",
                        help="train nothing: write and print the run config of the rebuilt line, for the operators "
                             "to start it on the deployed federation (`flwr run`)")
    return parser


def _newest_run() -> Path:
    from fedrec.versions import run_registries

    runs = [r.parent for r in run_registries() if (r.parent / "run_config.json").is_file()]
    if not runs:
        raise ConfigError("no run found under outputs/ or multirun/: pass --run RUN_DIR")
    return runs[0]


DEPLOYMENT_FILE = "divestment_run_config.toml"


def _plan(args: argparse.Namespace, console: Console) -> int:
    """`--deployment`: the rebuilt line's whole run config as a TOML file for `flwr run --run-config FILE`.

    A run of coalition lines gets one file per line the regions shaped (`LINE/divestment_run_config.toml`).
    """
    from fedrec.divestment.run import divested_lines, line_view, plan_divestment
    from fedrec.run_lines import coalition_members
    from fedrec.settings import load_run_config

    run_dir = args.run or _newest_run()
    settings = load_run_config(run_dir)
    out = args.out or run_dir / f"divest-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    if coalition_members(settings):
        parts = [(line, line_view(settings, line), removed, out / line)
                 for line, removed in divested_lines(settings, list(args.regions)).items()]
    else:
        parts = [("", settings, list(args.regions), out)]
    for line, view, removed, where in parts:
        plan = plan_divestment(view, removed, method=args.method, out_dir=where, recovery_rounds=args.recovery_rounds)
        where.mkdir(parents=True, exist_ok=True)
        path = where / DEPLOYMENT_FILE
        head = [f"# fedrec divest {' '.join(removed)} --method {args.method}"
                + (f" (coalition line {line})" if line else "") + ": the rebuilt line's run config",
                "# (the whole run config: Flower reads a --run-config file alone, without the app's defaults)"]
        path.write_text("\n".join([*head, *(f"{k} = {_toml(v)}" for k, v in sorted(plan.run.to_run_config().items()))])
                        + "\n")
        console.print((f"[bold]coalition line {line}[/bold]: " if line else "")
                      + f"the rebuilt line starts from {plan.start.short_id} (round {plan.start.round}) and replaces "
                      f"{plan.replaces.short_id}: {plan.run.num_rounds - plan.start.round} round(s) over "
                      f"{plan.run.min_nodes} region(s). Changed from the run's config:", highlight=False)
        for key, value in sorted(plan.run_config_changes(settings).items()):
            console.print(f"  {key} = {_toml(value)}", highlight=False, soft_wrap=True)
        console.print(f"start it on the deployed federation: flwr run . FEDERATION --stream --run-config {path}",
                      highlight=False, soft_wrap=True)
    return 0


def _toml(value: Any) -> str:
    """A run-config value in TOML (a JSON string is a TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, int | float) else json.dumps(str(value))


def _divest(args: argparse.Namespace) -> dict[str, Any]:
    from fedrec.divestment import divest, divest_lines
    from fedrec.divestment.run import line_view
    from fedrec.flower.simulation import run_simulation
    from fedrec.run_lines import coalition_members
    from fedrec.settings import load_run_config

    run_dir = args.run or _newest_run()
    settings = load_run_config(run_dir)
    out = args.out or run_dir / f"divest-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    if coalition_members(settings):  # one report per line the regions shaped
        lines = divest_lines(settings, list(args.regions), method=args.method, out_dir=out, engine=run_simulation,
                             recovery_rounds=args.recovery_rounds)
        report: dict[str, Any] = {"run": str(run_dir), "output_dir": str(out), "lines": {
            line: _line_report(line_view(settings, line), result) for line, result in lines.items()}}
    else:
        result = divest(settings, list(args.regions), method=args.method, out_dir=out, engine=run_simulation,
                        recovery_rounds=args.recovery_rounds)
        report = {"run": str(run_dir), **_line_report(settings, result)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "divestment.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _line_report(settings: RunSettings, result: Divestment) -> dict[str, Any]:
    """One rebuilt line: what `divest` returned, the line before, and the removal test of each removed region."""
    from fedrec.divestment.evidence import removal_test
    from fedrec.versions import ModelRegistry

    report: dict[str, Any] = result.to_dict()
    before = json.loads((Path(settings.output_dir) / "federated_history.json").read_text())["rounds"]
    report["before"] = {"per_region": before[-1]["per_region"], "overall": before[-1]["overall"]} if before else {}
    registry = ModelRegistry(settings.registry_root() or Path(settings.output_dir) / "registry", create=False)
    data_dir = Path(settings.data_dir)
    report["removal_test"] = {}
    for region in result.removed:
        if not (data_dir / f"silo_{region}.npz").is_file():
            report["removal_test"][region] = {"skipped": f"no data of {region} in {data_dir} (a deployment)"}
            continue
        models = {"before": registry.load(result.replaces)[0], "after": registry.load(result.head)[0]}
        report["removal_test"][region] = removal_test(data_dir, region, settings.model_spec,
                                                      settings.train_config(), models, seed=settings.seed)
    return report


def _print(report: dict[str, Any], console: Console) -> None:
    if "lines" in report:
        for line, part in report["lines"].items():
            console.print(f"[bold]coalition line {line}", highlight=False)
            _print_line(part, console)
        console.print(f"written: {Path(report['output_dir']) / 'divestment.json'}", highlight=False)
        return
    _print_line(report, console)
    console.print(f"written: {Path(report['output_dir']) / 'divestment.json'}", highlight=False)


def _print_line(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"divested {', '.join(report['removed'])} ({report['method']}): the remaining regions",
                  box=box.SIMPLE_HEAD)
    for col in ("region", "ndcg@20 before", "ndcg@20 after"):
        table.add_column(col, justify="right" if col != "region" else "left")
    before = report.get("before", {}).get("per_region", {})
    for region, metrics in sorted(report["per_region"].items()):
        was = before.get(region, {}).get("ndcg@20")
        table.add_row(region, "-" if was is None else f"{was:.4f}", f"{metrics['ndcg@20']:.4f}")
    console.print(table)
    console.print(f"new head {report['head'][:16]} (rebuilt from {report['rebuilt_from'][:16]}, replaces "
                  f"{report['replaces'][:16]}): {report['rounds']} round(s), {report['silo_rounds']} local "
                  f"trainings, {report['wall_time_s']:.1f} s", highlight=False)
    for region, test in report["removal_test"].items():
        if "skipped" in test:
            console.print(f"removal test {region}: skipped ({test['skipped']})", highlight=False)
            continue
        lost = test["lost"]["after"]
        console.print(f"removal test {region}: {test['metric']} on its {test['own_items']} own items, "
                      f"{test['users']} test users: before {test['signal']['before']:.4f}, after "
                      f"{test['signal']['after']:.4f} (lost {lost['difference']:.4f}, 95% CI "
                      f"{lost['low']:.4f}..{lost['high']:.4f})", highlight=False)


def divest_main(argv: list[str], console: Console | None = None) -> int:
    """Entry point of `fedrec divest`: 0, or 2 on a user mistake."""
    out = console or Console()

    def handle(args: argparse.Namespace) -> int:
        if args.deployment:
            return _plan(args, out)
        _print(_divest(args), out)
        return 0

    return run_command("fedrec divest", build_parser(), handle, argv)
