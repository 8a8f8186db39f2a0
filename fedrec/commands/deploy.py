"""`fedrec deploy ...`: stand up a local multi-jurisdiction federation, make certificates and keys, check a node.

fedrec deploy local [--world DIR] [--out DIR] [--rounds N] [--insecure] [--epsilon E]
fedrec deploy certs DIR [--host NAME ...]        # a CA and a SuperLink certificate (testing)
fedrec deploy key DIR NAME                       # a SuperNode's authentication key pair
fedrec deploy check-node --node-config 'region="eu" data-path="..." state-dir="..."' [--privacy user_dp]
                         [--trusted-entities FILE] [--superlink HOST:PORT [--probe] [--root-certificates CA]]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.text import Text

from fedrec.errors import FedrecError

# Flower 1.42's SuperLink serves the Fleet API (SuperNodes), the Control API (`flwr` CLI) and the Runtime API on
# one host:port (flwr/superlink/main.py: one FastAPI app with the /v1/fleet, /v1/control and /v1/runtime
# routers; `--control-api-address` is deprecated and ignored), and open-source Flower has no Control API
# authentication (the NoOp plugin unless FLWR_OIDC_ENABLED=1 with Flower Enterprise).
CONTROL_API_PATH = "/v1/control/get-login-details"  # read-only: says which account authentication is on
HUB_KEY_PREFIX = "fpk_"  # Flower Hub's public key ids, the keys of a --trusted-entities file


def build_parser() -> argparse.ArgumentParser:
    """The `fedrec deploy` argument parser."""
    parser = argparse.ArgumentParser(prog="fedrec deploy", description=__doc__.split("\n\n")[0])
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


def deploy_main(argv: list[str], console: Console | None = None) -> int:
    """Entry point of `fedrec deploy`; returns the exit code (2 for a user mistake)."""
    console = console or Console()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check-node" and args.probe and not args.superlink:
        parser.error("check-node --probe needs --superlink HOST:PORT")
    try:
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
    except (FedrecError, OSError) as exc:
        console.print(f"[bold red]fedrec deploy: error:[/] {exc}", highlight=False)
        return 2


def check_trusted_entities(path: Path | None) -> tuple[list[str], list[str], list[str]]:
    """(problems, warnings, notes) about which apps a SuperNode started with `--trusted-entities path` runs.

    Mirrors flower-supernode 1.42: the file must be a YAML mapping of key ids to OpenSSH ssh-ed25519 public
    keys (else it exits with code 304); an empty mapping verifies nothing; a FAB runs only when one of its Flower
    Hub signatures is by a listed key, and a FAB sent from a local directory (`flwr run .`) carries none.
    """
    if path is None:
        return [], ["unverified apps: this node runs any app a run brings, with full access to its data-path and "
                    "state-dir, and whoever reaches the SuperLink's Control API can start a run. Start "
                    "flower-supernode with --trusted-entities FILE (and check FILE here) so that only Flower Hub "
                    "apps signed by keys in FILE run."], []
    import yaml
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        entities = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError) as exc:
        return [f"--trusted-entities {path}: {exc}"], [], []
    if not isinstance(entities, dict):
        return [f"--trusted-entities {path}: not a YAML mapping of key ids to ssh-ed25519 public keys "
                "(flower-supernode exits with code 304)"], [], []
    if not entities:
        return [], [f"unverified apps: {path} lists no keys, so Flower verifies nothing (as without "
                    "--trusted-entities). List the Flower Hub keys (fpk_...) whose signatures you trust."], []
    problems, warnings = [], []
    for key_id, key in entities.items():
        try:
            if not isinstance(load_ssh_public_key(str(key).encode()), ed25519.Ed25519PublicKey):
                raise ValueError("not an ssh-ed25519 key")
        except (ValueError, TypeError) as exc:
            problems.append(f"--trusted-entities {path}: {key_id}: {exc} (Flower accepts OpenSSH ssh-ed25519 "
                            "public keys only; flower-supernode exits with code 304)")
            continue
        if not str(key_id).startswith(HUB_KEY_PREFIX):
            warnings.append(f"{path}: key id {key_id!r} is not a Flower Hub key id ({HUB_KEY_PREFIX}...), so no "
                            "app signature will ever match it")
    if problems:
        return problems, warnings, []
    notes = [f"apps: only Flower Hub apps signed by {', '.join(map(str, entities))} run here (`flwr run "
             "@ACCOUNT/APP==VERSION`); a run sent from a directory (`flwr run .`) is refused"]
    return problems, warnings, notes


def probe_control_api(address: str, *, root_certificates: Path | None = None, insecure: bool = False,
                      timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> tuple[str, str]:
    """Whether the SuperLink's Control API answers at `address` from here: (state, detail).

    state is "open" (answers, no login: account authentication "noop"), "login" (answers, requires a login),
    "closed" (an HTTP error: filtered or not a SuperLink) or "unreachable". One read-only request
    (`GetLoginDetails`); nothing is changed on the SuperLink.
    """
    from flwr.proto.control_pb2 import GetLoginDetailsRequest, GetLoginDetailsResponse
    from flwr.supercore.protobuf.constants import PROTOBUF_MEDIA_TYPE
    from google.protobuf.message import DecodeError

    verify: str | bool = False if insecure else (str(root_certificates) if root_certificates else True)
    url = f"{'http' if insecure else 'https'}://{address}{CONTROL_API_PATH}"
    try:
        with httpx.Client(verify=verify, timeout=timeout, transport=transport) as client:
            response = client.post(url, content=GetLoginDetailsRequest().SerializeToString(),
                                   headers={"content-type": PROTOBUF_MEDIA_TYPE, "accept": PROTOBUF_MEDIA_TYPE})
    except httpx.HTTPError as exc:
        return "unreachable", f"{type(exc).__name__}: {exc}"
    if response.is_error:
        return "closed", f"HTTP {response.status_code}"
    authn = ""
    if response.headers.get("content-type", "").startswith(PROTOBUF_MEDIA_TYPE):
        with contextlib.suppress(DecodeError):
            authn = GetLoginDetailsResponse.FromString(response.content).authn_type
    if not authn:
        return "closed", f"HTTP {response.status_code}, but not a Control API answer"
    return ("open" if authn == "noop" else "login"), authn


def control_api_findings(address: str, probe: tuple[str, str] | None, verified: bool) -> tuple[list[str], list[str]]:
    """(warnings, notes) about the Control API behind the SuperLink address this node connects to."""
    consequence = ("start runs of the apps your trusted keys signed, with any run config" if verified
                   else "run their own code in this silo")
    if probe is None:
        return [f"Control API: Flower 1.42 serves it (`flwr run`, `flwr supernode register`; no login in "
                f"open-source Flower) on the SuperNodes' port, so whoever reaches {address} can {consequence}, "
                "unless the coordinator lets only /v1/fleet/ through there. Check with --probe."], []
    state, detail = probe
    if state == "open":
        return [f"Control API answers at {address} from this machine without a login ({detail}): whoever "
                f"reaches it can {consequence}. Ask the coordinator to expose only /v1/fleet/ "
                "there (docs/running-across-jurisdictions.md)."], []
    if state == "login":
        return [], [f"Control API answers at {address} and requires a login ({detail}); logged-in accounts "
                    f"can {consequence}"]
    if state == "closed":
        return [], [f"Control API does not answer at {address} from here ({detail}): filtered in front of the "
                    "SuperLink, or not a SuperLink"]
    return [f"could not reach {address} to probe its Control API ({detail})"], []


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
