"""Tests of the federation credentials: CA-signed SuperLink certificate, site key pairs."""

from __future__ import annotations

import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from brainfl.federation.certs import make_credentials


def test_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    make_credentials(tmp_path, ["coordinator.example.org", "10.0.0.5"], sites=2)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "coordinator.example.org"} <= set(names.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("10.0.0.5") in names.get_values_for_type(x509.IPAddress)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_each_site_gets_its_own_nist_ec_key_pair_private_to_the_owner(tmp_path):
    make_credentials(tmp_path, [], sites=2)
    publics = []
    for site in (0, 1):
        private = load_ssh_private_key((tmp_path / f"site_{site}").read_bytes(), password=None)
        public = load_ssh_public_key((tmp_path / f"site_{site}.pub").read_bytes())
        assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert stat.S_IMODE((tmp_path / f"site_{site}").stat().st_mode) == 0o600
        publics.append(public.public_numbers())
    assert publics[0] != publics[1]
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
