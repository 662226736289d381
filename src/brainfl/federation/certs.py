"""Credentials for a secure federation: a CA, the SuperLink's TLS certificate, site keys.

``brainfl certs --output-dir certs/ --hosts coordinator.example.org 10.0.0.5 --sites 3``
writes ``ca.crt``/``ca.key`` (the federation's certificate authority),
``server.pem``/``server.key`` (the SuperLink's TLS certificate, valid for
localhost, 127.0.0.1, ::1 and every given host name or IP) and, per site,
``site_<n>`` and ``site_<n>.pub``: an ECDSA (NIST P-384) key pair in OpenSSH
format for SuperNode authentication. Each hospital gets ``ca.crt`` and its own
private key; the coordinator registers each public key with
``flwr supernode register``. Private keys are written with mode 0600.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from brainfl.core.arguments import add_output_dir
from brainfl.core.errors import BrainFLError
from brainfl.core.files import write_atomically

VALIDITY_DAYS = 365
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "brainfl"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` atomically; a private key is readable by its owner alone before it is written."""

    def write(handle: BinaryIO) -> None:
        if private:
            os.fchmod(handle.fileno(), 0o600)
        handle.write(data)

    write_atomically(path, write)


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(out: Path, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Self-signed certificate authority of the federation."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("brainfl federation CA"))
        .issuer_name(_name("brainfl federation CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA384())
    )
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _pem_private(key), private=True)
    return cert, key


def make_server_certificate(
    out: Path,
    hosts: list[str],
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> None:
    """The SuperLink's TLS certificate, signed by the CA, valid for ``hosts``."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(_subject_alt_names(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    _write(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _pem_private(key), private=True)


def make_site_key(out: Path, site: int) -> Path:
    """An OpenSSH ECDSA key pair ``site_<n>`` / ``site_<n>.pub`` for SuperNode authentication."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = out / f"site_{site}"
    _write(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(out / f"site_{site}.pub", public + f" brainfl-site-{site}\n".encode())
    return private


def make_credentials(out: Path, hosts: list[str], sites: int) -> None:
    """Write the CA, the SuperLink certificate and ``sites`` site key pairs into ``out``."""
    if sites < 0:
        raise BrainFLError(f"--sites must be 0 or more, got {sites}")
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca, ca_key = make_ca(out, now)
    make_server_certificate(out, [*DEFAULT_HOSTS, *hosts], ca, ca_key, now)
    for site in range(sites):
        make_site_key(out, site)


def run_certs(args: argparse.Namespace) -> None:
    """Handler of ``brainfl certs``."""
    make_credentials(args.output_dir, list(args.hosts), args.sites)
    print(f"wrote CA, SuperLink certificate and {args.sites} site key pairs to {args.output_dir}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``certs`` sub-command's options and handler."""
    add_output_dir(parser, "output folder (default: certs/)", default=Path("certs"), old=["--out"])
    parser.add_argument("--hosts", nargs="*", default=[], help="extra host names or IPs of the SuperLink")
    parser.add_argument("--sites", type=int, default=2, help="number of site key pairs (default: 2)")
    parser.set_defaults(handler=run_certs)
