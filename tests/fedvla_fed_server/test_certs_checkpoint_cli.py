"""Credentials, per-round checkpoints and the fedvla-federation CLI (real subprocess)."""
from __future__ import annotations

import ipaddress
import subprocess
import sys

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedvla_core.federated.checkpoint_store import CheckpointStore
from fedvla_fed_server.certs import generate_certificates


def test_certificates_have_sans_and_p384_node_keys(tmp_path):
    paths = generate_certificates(tmp_path, num_nodes=2)
    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    assert server.issuer == ca.subject
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm))
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    for i in range(2):
        key = load_ssh_private_key(paths[f"node{i}_key"].read_bytes(), password=None)
        pub = load_ssh_public_key(paths[f"node{i}_pub"].read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert key.public_key().public_numbers() == pub.public_numbers()
        assert paths[f"node{i}_key"].stat().st_mode & 0o077 == 0


def test_checkpoint_store_resumes_latest_and_prunes(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    assert store.latest() is None
    for r in range(4):
        store.save(r, {"w": np.full(3, r, np.float32)}, {"metrics": {"loss": 1.0 / (r + 1)}})
    rnd, arrays, info = CheckpointStore(tmp_path).latest()
    assert rnd == 3 and np.all(arrays["w"] == 3) and info["metrics"]["loss"] == 0.25
    assert sorted(p.name for p in tmp_path.glob("round_*.safetensors")) == ["round_0002.safetensors",
                                                                          "round_0003.safetensors"]


def test_cli_certs_and_serve_requires_tls_or_explicit_insecure(tmp_path):
    exe = [sys.executable, "-m", "fedvla_fed_server.cli"]
    out = subprocess.run(exe + ["certs", "--out", str(tmp_path / "c"), "--nodes", "1"], capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "c" / "node0.pub").is_file() and "ca.crt" in out.stdout
    out = subprocess.run(exe + ["serve", "--state-dir", str(tmp_path / "s")], capture_output=True, text=True)
    assert out.returncode == 2 and "--insecure" in out.stderr
    out = subprocess.run(exe + ["serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--round-timeout" in out.stdout and "--min-clients" in out.stdout
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path / "x", keep=0)
