#!/usr/bin/env python3
"""The dev identities envoy/envoy-identity.yaml reads (`make identity-dev`, and the tests): a
workload CA and a server certificate for 127.0.0.1, client certificates with the SPIFFE IDs the
shipped document names (and one it does not), a front proxy's, and an identity provider's RSA
key with its JWKS. Writes DIR (default .run/identity); existing files are kept.

    python3 tests/make-identity.py [DIR]          # then, e.g.:
    curl --cacert DIR/ca.pem --cert DIR/team-a-agent.pem --key DIR/team-a-agent.key ...
    python3 tests/make-identity.py DIR --token alice@example.com   # prints a JWT for that email
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import identities  # noqa: E402

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=".run/identity")
    parser.add_argument("--token", metavar="EMAIL", help="print a JWT (1 hour) for this email")
    args = parser.parse_args()
    directory = Path(args.dir)
    _, idp = identities.make_dev(directory)
    if args.token:
        print(idp.token({"sub": args.token.split("@")[0], "email": args.token}, lifetime_s=3600))
    else:
        print(f"made {directory}: ca.pem, server.pem, {', '.join(identities.DEV_WORKLOADS)} (.pem/.key), jwks.json")


if __name__ == "__main__":
    main()
