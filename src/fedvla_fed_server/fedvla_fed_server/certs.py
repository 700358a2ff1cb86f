"""Deployment credentials: a private CA, the SuperLink's TLS certificate, and SuperNode key pairs.

* ``ca.crt`` / ``ca.key``: a self-signed CA (ECDSA P-384). Robots get ``ca.crt`` to verify the server.
* ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, with SANs for the
  given hosts (default ``localhost`` and ``127.0.0.1``).
* ``node<i>`` / ``node<i>.pub``: one ECDSA P-384 key pair per robot in OpenSSH format, what
  ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read.

Only the ``cryptography`` package is used (it ships with Flower). Private keys are written 0600.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str):
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate_node_keys(out_dir, names: Sequence[str]) -> list[tuple[Path, Path]]:
    """ECDSA P-384 key pairs in OpenSSH format: ``<name>`` (private, 0600) and ``<name>.pub``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        priv, pub = out / name, out / f"{name}.pub"
        _write(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()), private=True)
        _write(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b"\n")
        pairs.append((priv, pub))
    return pairs


def generate_certificates(out_dir, num_nodes: int = 2, hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                          days: int = 365, node_prefix: str = "node") -> dict[str, Path]:
    """Write CA, server certificate and ``num_nodes`` SuperNode key pairs into ``out_dir``; returns the paths."""
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    if not hosts:
        raise ValueError("hosts must name at least one host for the server certificate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FedVLA federation CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA384()))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA384()))

    paths = {"ca_cert": out / "ca.crt", "ca_key": out / "ca.key", "server_cert": out / "server.pem",
             "server_key": out / "server.key"}
    _write(paths["ca_cert"], ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths["ca_key"], _pem_key(ca_key), private=True)
    _write(paths["server_cert"], server_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths["server_key"], _pem_key(server_key), private=True)
    for i, (priv, pub) in enumerate(generate_node_keys(out, [f"{node_prefix}{i}" for i in range(num_nodes)])):
        paths[f"node{i}_key"] = priv
        paths[f"node{i}_pub"] = pub
    return paths
