"""The deployment helpers without processes: certificates that verify, keys Flower reads, node checks."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.common.config import parse_config_args
from flwr.proto.control_pb2 import GetLoginDetailsResponse
from rich.console import Console

from fedrec.commands import deploy as cli
from fedrec.commands.deploy import deploy_main
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.deploy.certs import make_node_key, make_tls
from fedrec.deploy.node_checks import probe_control_api
from fedrec.deploy.processes import run_config_arg
from fedrec.world import prepare_world


def test_the_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path: Path) -> None:
    make_tls(tmp_path, hosts=("coordinator.example.org", "10.0.0.5"))
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if not
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["coordinator.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0  # private keys readable by the owner only


def test_a_node_key_is_an_openssh_p256_pair(tmp_path: Path) -> None:
    private, public = make_node_key(tmp_path, "eu")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert pub.public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


def test_run_config_syntax_round_trips_through_flowers_parser() -> None:
    values = {"data-dir": "/srv/a b/world", "num-rounds": 3, "privacy-epsilon": 4.0, "resume": True,
              "run-name": "x"}
    assert dict(parse_config_args([run_config_arg(values)])) == values


def test_check_node_says_what_is_wrong_and_what_is_right(tmp_path: Path) -> None:
    world = prepare_world(generate_world(SyntheticWorldConfig(n_users=60, n_items=20, region_only_items=1,
                                                              region_sizes=(1.0, 1.0), min_interactions=4)),
                          SplitConfig(), tmp_path / "world")
    console = Console(record=True, width=200)
    good = f'region="eu" data-path="{world.data_dir / "silo_eu.npz"}" state-dir="{tmp_path / "s"}" epsilon-budget=4'
    assert deploy_main(["check-node", "--node-config", good, "--privacy", "user_dp"], console) == 0
    bad = f'region="eu" data-path="{tmp_path / "missing.npz"}"'
    assert deploy_main(["check-node", "--node-config", bad], console) == 1
    no_budget = good.replace(" epsilon-budget=4", "")
    assert deploy_main(["check-node", "--node-config", no_budget, "--privacy", "user_dp"], console) == 1
    out = console.export_text()
    assert "node config for eu: OK" in out and "missing.npz" in out and "sets no epsilon-budget" in out


@pytest.mark.parametrize("argv", [["certs"], ["key", "dir"], ["bogus"],
                                  ["check-node", "--node-config", "x", "--probe"]])  # --probe needs --superlink
def test_cli_misuse_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedrec deploy: error: ") and err.count("\n") == 1, err


# --- what a node would run, and who could start it (finding 10: the Control API is code execution in every silo) ---


@pytest.fixture(scope="module")
def node_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("node")
    world = prepare_world(generate_world(SyntheticWorldConfig(n_users=60, n_items=20, region_only_items=1,
                                                              region_sizes=(1.0, 1.0), min_interactions=4)),
                          SplitConfig(), root / "world")
    return f'region="eu" data-path="{world.data_dir / "silo_eu.npz"}" state-dir="{root / "state"}"'


def check(argv: list[str]) -> tuple[int, str]:
    console = Console(record=True, width=400)
    code = deploy_main(["check-node", *argv], console)
    return code, console.export_text()


def ed25519_public(comment: str = "") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    text = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{text} {comment}".strip()


def test_check_node_warns_when_any_app_would_run_and_the_control_api_shares_the_port(node_config: str) -> None:
    code, out = check(["--node-config", node_config, "--superlink", "coordinator.example.org:9092"])
    assert code == 0  # warnings, not errors
    assert "node config for eu: OK" in out
    assert "warning: unverified apps" in out and "--trusted-entities FILE" in out
    assert "warning: Control API" in out and "coordinator.example.org:9092" in out and "/v1/fleet/" in out
    assert "run their own code in this silo" in out
    assert "warning: privacy is the run's choice" in out and "epsilon-budget" in out

    code, out = check(["--node-config", node_config + " epsilon-budget=4"])
    assert code == 0 and "privacy is the run's choice" not in out
    assert "warning: Control API" not in out  # no --superlink: nothing to say about its address


def test_check_node_accepts_the_trusted_entities_flower_accepts(node_config: str, tmp_path: Path) -> None:
    from flwr.supernode.cli.flower_supernode import _try_obtain_trusted_entities, _validate_public_keys_ed25519

    path = tmp_path / "trusted.yaml"
    path.write_text(f"fpk_1234: '{ed25519_public('reviewer')}'\nfpk_5678: {ed25519_public()}\n")
    entities = _try_obtain_trusted_entities(path)  # what flower-supernode --trusted-entities reads (exits if bad)
    assert entities is not None and len(entities) == 2
    _validate_public_keys_ed25519(entities)

    code, out = check(["--node-config", node_config + " epsilon-budget=4", "--trusted-entities", str(path),
                       "--superlink", "coordinator.example.org:9092"])
    assert code == 0 and "unverified apps" not in out and "not usable" not in out
    assert "only Flower Hub apps signed by fpk_1234, fpk_5678 run here" in out and "`flwr run .`) is refused" in out
    assert "warning: Control API" in out and "apps your trusted keys signed, with any run config" in out


def test_check_node_refuses_the_trusted_entities_flower_refuses(node_config: str, tmp_path: Path) -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    cases = {"missing.yaml": None, "empty.yaml": "", "list.yaml": "- a\n- b\n", "ecdsa.yaml": f"fpk_1: '{ecdsa}'\n",
             "junk.yaml": "fpk_1: not-a-key\n", "broken.yaml": "fpk_1: [unclosed\n"}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        code, out = check(["--node-config", node_config, "--trusted-entities", str(path)])
        assert code == 1 and "not usable: --trusted-entities" in out and name in out, (name, out)
        assert "only Flower Hub apps" not in out, name


def test_check_node_flags_trusted_entities_that_verify_nothing(node_config: str, tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")  # flower-supernode starts, and verifies nothing
    code, out = check(["--node-config", node_config, "--trusted-entities", str(tmp_path / "none.yaml")])
    assert code == 0 and "unverified apps" in out and "lists no keys" in out

    (tmp_path / "odd.yaml").write_text(f"my-key: '{ed25519_public()}'\n")  # not a Flower Hub key id
    code, out = check(["--node-config", node_config, "--trusted-entities", str(tmp_path / "odd.yaml")])
    assert code == 0 and "'my-key' is not a Flower Hub key id" in out


def control_api(status: int, authn: str | None, content_type: str = "application/protobuf") -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/v1/control/get-login-details"
        assert request.url.scheme == "https"
        body = GetLoginDetailsResponse(authn_type=authn).SerializeToString() if authn is not None else b"<html>"
        return httpx.Response(status, content=body, headers={"content-type": content_type})
    return httpx.MockTransport(answer)


def test_the_probe_tells_an_open_control_api_from_a_filtered_one() -> None:
    addr = "coordinator.example.org:9092"
    assert probe_control_api(addr, transport=control_api(200, "noop")) == ("open", "noop")
    assert probe_control_api(addr, transport=control_api(200, "oidc")) == ("login", "oidc")
    assert probe_control_api(addr, transport=control_api(403, None, "text/html")) == ("closed", "HTTP 403")
    assert probe_control_api(addr, transport=control_api(200, None, "text/html"))[0] == "closed"  # not Flower

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)
    state, detail = probe_control_api(addr, transport=httpx.MockTransport(refuse))
    assert state == "unreachable" and "Connection refused" in detail


@pytest.mark.parametrize(("probe", "expected", "absent"), [
    (("open", "noop"), "warning: Control API answers at coordinator.example.org:9092 from this machine without a "
                       "login (noop)", "does not answer"),
    (("closed", "HTTP 403"), "note: Control API does not answer at coordinator.example.org:9092 from here (HTTP 403)",
     "warning: Control API"),
    (("login", "oidc"), "note: Control API answers at coordinator.example.org:9092 and requires a login (oidc)",
     "warning: Control API"),
    (("unreachable", "ConnectError: refused"), "warning: could not reach coordinator.example.org:9092",
     "note: Control"),
])
def test_check_node_reports_what_the_probe_found(node_config: str, monkeypatch: pytest.MonkeyPatch,
                                                 probe: tuple[str, str], expected: str, absent: str) -> None:
    seen: dict[str, object] = {}

    def fake_probe(address: str, **kw: object) -> tuple[str, str]:
        seen.update(kw, address=address)
        return probe
    monkeypatch.setattr(cli, "probe_control_api", fake_probe)
    code, out = check(["--node-config", node_config, "--superlink", "coordinator.example.org:9092", "--probe",
                       "--root-certificates", "ca.crt"])
    assert code == 0 and expected in out and absent not in out
    assert seen == {"address": "coordinator.example.org:9092", "root_certificates": Path("ca.crt"), "insecure": False}
