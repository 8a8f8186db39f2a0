"""TLS certificates and SuperNode keys for a test or local federation (`cryptography`, which Flower needs).

`make_tls(dir)`: a local CA (`ca.crt`/`ca.key`) and a SuperLink server certificate for 127.0.0.1, ::1 and
localhost (`server.crt`/`server.key`), EC P-256, valid 30 days. `make_node_key(dir, name)`: a SuperNode's
authentication key pair (EC P-256 in OpenSSH format, as `ssh-keygen -t ecdsa -b 256` makes; the public
half is what `flwr supernode register` takes). For real jurisdictions use certificates from your own CA
for the SuperLink's real host name (docs/running-across-jurisdictions.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def make_tls(out: Path, *, days: int = 30, hosts: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")) -> Path:
    """Write ca.crt/ca.key and server.crt/server.key (SANs: `hosts`) into `out`; returns `out`."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedrec local CA")).issuer_name(_name("fedrec local CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pkcs8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_private(out / "ca.key", ca_key.private_bytes(*pkcs8))
    (out / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(out / "server.key", key.private_bytes(*pkcs8))
    return out


def make_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """Write `<out>/<name>` (private, OpenSSH) and `<out>/<name>.pub`; returns both paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / name, out / f"{name}.pub"
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return private, public
