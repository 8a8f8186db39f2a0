"""`fedrec deploy ...`: stand up a local multi-jurisdiction federation, make certificates and keys, check a node.

fedrec deploy local [--world DIR] [--out DIR] [--rounds N] [--insecure] [--epsilon E]
fedrec deploy certs DIR [--host NAME ...]        # a CA and a SuperLink certificate (testing)
fedrec deploy key DIR NAME                       # a SuperNode's authentication key pair
fedrec deploy check-node --node-config 'region="eu" data-path="..." state-dir="..."' [--privacy user_dp]
                         [--trusted-entities FILE] [--superlink HOST:PORT [--probe] [--root-certificates CA]]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from fedrec.commands.parsing import CommandParser, UsageError, run_command
from fedrec.deploy.node_checks import check_trusted_entities, control_api_findings, probe_control_api


def build_parser() -> argparse.ArgumentParser:
    """The `fedrec deploy` argument parser."""
    parser = CommandParser(prog="fedrec deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser("local", help="a SuperLink and one SuperNode per region on 127.0.0.1; run the app")
    local.add_argument("--world", type=Path, help="a prepared world (OUTPUT/world of a `fedrec` run); default: "
                       "a small synthetic world of 3 regions made in OUT/world")
    local.add_argument("--out", type=Path, default=Path("deploy-local"), help="where everything goes")
    local.add_argument("--rounds", type=int, default=3)
    local.add_argument("--insecure", action="store_true", help="no TLS, no SuperNode authentication")
    local.add_argument("--epsilon", type=float, help="run with privacy=user_dp at this ε per silo")
    local.add_argument("--run-config", default="", help="extra run config, e.g. 'dim=16 lr=0.02'")
    certs = sub.add_parser("certs", help="a local CA and a SuperLink server certificate (for testing)")
    certs.add_argument("dir", type=Path)
    certs.add_argument("--host", action="append", help="SAN of the server certificate (repeatable); default "
                       "127.0.0.1, ::1, localhost")
    key = sub.add_parser("key", help="a SuperNode authentication key pair (register the .pub with the SuperLink)")
    key.add_argument("dir", type=Path)
    key.add_argument("name")
    check = sub.add_parser("check-node", help="check a SuperNode's node config (and what it will run) before "
                           "starting it")
    check.add_argument("--node-config", required=True, help="as given to flower-supernode --node-config")
    check.add_argument("--privacy", default="none", choices=("none", "user_dp"))
    check.add_argument("--trusted-entities", type=Path, metavar="FILE",
                       help="as given to flower-supernode --trusted-entities (YAML: fpk_ID: 'ssh-ed25519 ...')")
    check.add_argument("--superlink", metavar="HOST:PORT", help="as given to flower-supernode --superlink")
    check.add_argument("--probe", action="store_true", help="ask the SuperLink from here whether its Control API "
                       "answers (read-only; needs --superlink)")
    check.add_argument("--root-certificates", type=Path, metavar="CA", help="for --probe: as given to "
                       "flower-supernode --root-certificates (default: the system's CAs)")
    check.add_argument("--insecure", action="store_true", help="for --probe: the SuperLink runs without TLS")
    return parser


def _small_world(out: Path) -> Path:
    from fedrec.data.split import SplitConfig
    from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
    from fedrec.world import prepare_world

    cfg = SyntheticWorldConfig(n_users=1200, n_items=300, region_only_items=20, region_sizes=(5.0, 2.0, 1.0))
    return prepare_world(generate_world(cfg), SplitConfig(), out).data_dir


def _parse_node_config(text: str) -> dict[str, object]:
    from flwr.common.config import parse_config_args

    return dict(parse_config_args([text]))


def local_main(args: argparse.Namespace, console: Console) -> int:
    """Start the federation, run the app once, print where everything is, stop every process."""
    from fedrec.deploy.local import LocalFederation

    out = args.out.resolve()
    world = (args.world or _small_world(out / "world")).resolve()
    manifest = json.loads((world / "manifest.json").read_text())
    nodes: dict[str, dict[str, object]] = {
        r: {"data-path": str(world / f"silo_{r}.npz"), "state-dir": str(out / "silo-state" / r)}
        for r in manifest["regions"]}
    run_config: dict[str, object] = {"data-dir": str(world), "output-dir": str(out / "coordinator"),
                                     "num-rounds": args.rounds, "min-nodes": len(nodes)}
    if args.epsilon is not None:  # each jurisdiction holds the budget as its own policy; the run proposes it
        run_config.update({"privacy": "user_dp", "privacy-epsilon": args.epsilon})
        for node in nodes.values():
            node["epsilon-budget"] = args.epsilon
    run_config.update(_parse_node_config(args.run_config) if args.run_config else {})
    mode = "insecure" if args.insecure else "TLS + SuperNode authentication"
    console.print(f"fedrec deploy local: {len(nodes)} jurisdictions {list(nodes)}, {mode}, files in {out}")
    with LocalFederation(out / "federation", nodes, secure=not args.insecure) as fed:
        fed.start()
        console.print(f"  SuperLink 127.0.0.1:{fed.port} healthy after {fed.timings['superlink_start_s']:.1f} s; "
                      f"federation up after {fed.timings['startup_s']:.1f} s")
        t0 = time.monotonic()
        done = fed.run(run_config)
        wall = time.monotonic() - t0
        if done.returncode != 0:
            console.print(f"[bold red]flwr run failed[/] (logs in {fed.root / 'logs'}):\n{done.stdout[-3000:]}"
                          f"{done.stderr[-3000:]}", highlight=False)
            return 1
    history = json.loads((out / "coordinator" / "federated_history.json").read_text())
    times = [f"{e['round_time_s']:.1f}" for e in history["round_log"]]
    console.print(f"  {len(history['round_log'])} rounds in {wall:.1f} s (per round: {', '.join(times)} s)")
    console.print(f"  coordinator output: {out / 'coordinator'}; each silo's state (ledgers, users, serving): "
                  f"{out / 'silo-state'}/REGION; `fedrec audit verify {out / 'silo-state'}/REGION`")
    return 0


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "check-node" and args.probe and not args.superlink:
        raise UsageError("check-node --probe needs --superlink HOST:PORT")
    if args.command == "local":
        return local_main(args, console)
    if args.command == "certs":
        from fedrec.deploy.certs import make_tls

        out = make_tls(args.dir, hosts=tuple(args.host) if args.host else ("127.0.0.1", "::1", "localhost"))
        console.print(f"wrote {out}/ca.crt (give to every SuperNode and CLI), server.crt + server.key "
                      "(the SuperLink's), ca.key (keep offline)")
        return 0
    if args.command == "key":
        from fedrec.deploy.certs import make_node_key

        private, public = make_node_key(args.dir, args.name)
        console.print(f"wrote {private} (stays on the SuperNode) and {public} (`flwr supernode register "
                      f"{public} FEDERATION`)")
        return 0
    return check_node_main(args, console)


def deploy_main(argv: list[str], console: Console | None = None) -> int:
    """Entry point of `fedrec deploy`; returns the exit code (2 for a user mistake)."""
    out = console or Console()
    return run_command("fedrec deploy", build_parser(), lambda args: _dispatch(args, out), argv)


def check_node_main(args: argparse.Namespace, console: Console) -> int:
    """`fedrec deploy check-node`: the node config, then which apps it would run and who could start them."""
    from fedrec.settings import RunSettings
    from fedrec.silo.policy import NODE_DP_KEYS
    from fedrec.silo.preflight import check_silo

    node_config = _parse_node_config(args.node_config)
    # a node with its own privacy policy only ever trains under DP: check it for that
    privacy = "user_dp" if any(k in node_config for k in NODE_DP_KEYS) else args.privacy
    region, problem = check_silo(RunSettings(privacy=privacy), node_config)
    problems, warnings, notes = check_trusted_entities(args.trusted_entities)
    verified = bool(notes)  # a valid, non-empty --trusted-entities file
    if args.superlink:
        probe = (probe_control_api(args.superlink, root_certificates=args.root_certificates, insecure=args.insecure)
                 if args.probe else None)
        more_warnings, more_notes = control_api_findings(args.superlink, probe, verified=verified)
        warnings += more_warnings
        notes += more_notes
    if not any(k in node_config for k in ("epsilon-budget", "max-delta")):
        warnings.append("privacy is the run's choice: without epsilon-budget (or max-delta) in the node config, "
                        "whoever starts a run decides (privacy=\"none\" releases updates without DP). Set "
                        "epsilon-budget=E.")
    if problem:
        console.print(f"[bold red]node config for {region} is not usable:[/] {problem}", highlight=False)
    else:
        console.print(f"node config for {region}: OK (data, state dir{', ledger' if args.privacy != 'none' else ''})")
    for style, lead, texts in (("bold red", "not usable: ", problems), ("yellow", "warning: ", warnings),
                               ("", "note: ", notes)):
        for text in texts:  # Text, not markup: paths, key ids and errors are printed as they are
            console.print(Text.assemble((lead, style), text), highlight=False)
    return 1 if problem or problems else 0
