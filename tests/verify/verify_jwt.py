#!/usr/bin/env python3
"""Verify a JWT the way an independent relying party does, with PyJWT.

Fetches the issuer's OpenID Connect discovery document, checks that its
`issuer` equals the expected one byte for byte, fetches `jwks_uri`, picks the
key by the token's `kid`, and verifies signature, `alg`, `iss`, `aud`, `exp`,
`iat` and `nbf`. Nothing of Monoskope's own code is used.

Prints {"header": ..., "claims": ...} as JSON on success; prints the reason
on stderr and exits with status 1 on rejection.
"""

import argparse
import json
import ssl
import sys
import urllib.request

import jwt

ACCEPTED_ALGORITHMS = ["RS256", "ES256", "ES384"]


def fetch_json(url, context):
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", required=True, help="expected issuer URL")
    parser.add_argument("--audience", required=True, help="expected aud claim")
    parser.add_argument("--ca-file", required=True, help="CA certificate of the issuer's TLS certificate")
    parser.add_argument("token")
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.ca_file)
    discovery = fetch_json(args.issuer + "/.well-known/openid-configuration", context)
    if discovery.get("issuer") != args.issuer:
        sys.exit(f"discovery issuer {discovery.get('issuer')!r} differs from {args.issuer!r}")

    jwks = fetch_json(discovery["jwks_uri"], context)
    header = jwt.get_unverified_header(args.token)
    matches = [key for key in jwks["keys"] if key.get("kid") == header.get("kid")]
    if len(matches) != 1:
        sys.exit(f"no unique JWKS key with kid {header.get('kid')!r}")
    key = jwt.PyJWK(matches[0])
    if header.get("alg") != matches[0].get("alg"):
        sys.exit(f"header alg {header.get('alg')!r} differs from the key's alg {matches[0].get('alg')!r}")

    try:
        claims = jwt.decode(
            args.token,
            key=key,
            algorithms=ACCEPTED_ALGORITHMS,
            audience=args.audience,
            issuer=args.issuer,
            options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
        )
    except jwt.InvalidTokenError as error:
        sys.exit(f"rejected: {type(error).__name__}: {error}")

    json.dump({"header": header, "claims": claims}, sys.stdout)


if __name__ == "__main__":
    main()
