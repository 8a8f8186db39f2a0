"""What a SuperNode would run and who could start it: its `--trusted-entities` file and the SuperLink's Control API.

Used by `fedrec deploy check-node` before a jurisdiction starts its node (see
docs/running-across-jurisdictions.md, "Who can start a run").
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx

# Flower 1.42's SuperLink serves the Fleet API (SuperNodes), the Control API (`flwr` CLI) and the Runtime API on
# one host:port (flwr/superlink/main.py: one FastAPI app with the /v1/fleet, /v1/control and /v1/runtime
# routers; `--control-api-address` is deprecated and ignored), and open-source Flower has no Control API
# authentication (the NoOp plugin unless FLWR_OIDC_ENABLED=1 with Flower Enterprise).
CONTROL_API_PATH = "/v1/control/get-login-details"  # read-only: says which account authentication is on
HUB_KEY_PREFIX = "fpk_"  # Flower Hub's public key ids, the keys of a --trusted-entities file


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
