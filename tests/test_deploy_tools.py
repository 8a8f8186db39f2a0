"""The deployment helpers without processes: certificates that verify, keys Flower reads, node checks."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.config import parse_config_args
from rich.console import Console

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.deploy.certs import make_node_key, make_tls
from fedrec.deploy.cli import deploy_main
from fedrec.deploy.local import run_config_arg
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
    good = f'region="eu" data-path="{world.data_dir / "silo_eu.npz"}" state-dir="{tmp_path / "s"}"'
    assert deploy_main(["check-node", "--node-config", good, "--privacy", "user_dp"], console) == 0
    bad = f'region="eu" data-path="{tmp_path / "missing.npz"}"'
    assert deploy_main(["check-node", "--node-config", bad], console) == 1
    out = console.export_text()
    assert "node config for eu: OK" in out and "missing.npz" in out


@pytest.mark.parametrize("argv", [["certs"], ["key", "dir"], ["bogus"]])
def test_cli_misuse_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        deploy_main(argv)
    assert exc.value.code == 2
