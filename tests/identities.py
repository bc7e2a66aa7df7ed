"""Identities made in the test with `openssl`: a workload CA and client certificates carrying
SPIFFE IDs (URI SANs), and an identity provider that signs RS256 JWTs and publishes its JWKS."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path


def _openssl(*args: str, cwd: Path, stdin: bytes | None = None) -> bytes:
    run = subprocess.run(["openssl", *args], cwd=cwd, input=stdin, capture_output=True, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {run.stderr.decode(errors='replace')}")
    return run.stdout


class WorkloadCa:
    """A CA that issues client certificates whose only URI SAN is a SPIFFE ID, as a mesh's CA
    (Istio's, SPIRE) does. `server_cert`/`server_key` is a server certificate for 127.0.0.1."""

    def __init__(self, directory: Path, name: str = "Tollgate test workload CA"):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = directory / "ca.pem", directory / "ca.key"
        if not self.cert.exists():
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                     "-days", "30", "-subj", f"/CN={name}",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        self.server_cert, self.server_key = self.issue(
            "server", san="DNS:localhost,IP:127.0.0.1", usage="serverAuth")

    def issue(self, name: str, san: str, usage: str = "clientAuth") -> tuple[Path, Path]:
        """(certificate, key) files of a new leaf certificate with subjectAltName `san`."""
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        if cert.exists():
            return cert, key
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", f"{name}.csr",
                 "-subj", f"/O=tollgate-test/CN={name}", cwd=self.dir)
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName=critical,{san}\nbasicConstraints=CA:FALSE\n"
                       f"keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", cert.name, "-days", "30", "-extfile", ext.name, cwd=self.dir)
        for scratch in (self.dir / f"{name}.csr", ext, self.dir / "ca.srl"):
            scratch.unlink(missing_ok=True)
        return cert, key

    def workload(self, name: str, spiffe_id: str) -> tuple[Path, Path]:
        return self.issue(name, san=f"URI:{spiffe_id}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class IdentityProvider:
    """An OIDC-style issuer: an RSA key, its JWKS, and RS256 tokens signed with it."""

    def __init__(self, directory: Path, issuer: str, kid: str = "test-key-1"):
        self.dir, self.issuer, self.kid = directory, issuer, kid
        directory.mkdir(parents=True, exist_ok=True)
        self.key = directory / f"{kid}.key"
        if not self.key.exists():
            _openssl("genrsa", "-out", self.key.name, "2048", cwd=directory)

    def jwks(self) -> dict:
        modulus = _openssl("rsa", "-in", self.key.name, "-noout", "-modulus", cwd=self.dir).decode()
        n = bytes.fromhex(modulus.strip().split("=", 1)[1])
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                          "n": b64url(n), "e": b64url((65537).to_bytes(3, "big"))}]}

    def token(self, claims: dict, lifetime_s: int = 600, issuer: str | None = None, now: int | None = None) -> str:
        """A signed JWT with `iss` (this issuer unless `issuer`), `iat`, `exp` = iat + lifetime_s
        (negative: already expired) and `claims`."""
        now = int(time.time()) if now is None else now
        payload = {"iss": issuer or self.issuer, "iat": now, "exp": now + lifetime_s, **claims}
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
        signature = _openssl("dgst", "-sha256", "-sign", self.key.name, cwd=self.dir, stdin=signing_input.encode())
        return f"{signing_input}.{b64url(signature)}"


# --- the dev identities of envoy/envoy-identity.yaml (tests/make-identity.py) ---

DEV_ISSUER = "https://idp.example.com"
DEV_TRUST_DOMAIN = "spiffe://cluster.local"
DEV_WORKLOADS = {
    "team-a-agent": f"{DEV_TRUST_DOMAIN}/ns/team-a/sa/agent",
    "team-b-batch": f"{DEV_TRUST_DOMAIN}/ns/team-b/sa/batch",
    "front-proxy": f"{DEV_TRUST_DOMAIN}/ns/edge/sa/front-proxy",
    # A workload of the trust domain that no key entry names.
    "stranger": f"{DEV_TRUST_DOMAIN}/ns/team-c/sa/unknown",
}


def make_dev(directory: Path) -> tuple[WorkloadCa, IdentityProvider]:
    """Writes everything into `directory` (ca.pem, server.pem/.key, <workload>.pem/.key,
    jwks.json, the provider's key) and returns the CA and the provider."""
    ca = WorkloadCa(directory)
    # envoy-identity.yaml names these two files.
    for src, dst in ((ca.server_cert, "server.pem"), (ca.server_key, "server.key")):
        target = directory / dst
        if not target.exists():
            target.write_bytes(src.read_bytes())
    for name, spiffe_id in DEV_WORKLOADS.items():
        ca.workload(name, spiffe_id)
    idp = IdentityProvider(directory / "idp", DEV_ISSUER)
    (directory / "jwks.json").write_text(json.dumps(idp.jwks()))
    return ca, idp
