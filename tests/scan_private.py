#!/usr/bin/env python3
"""Looks for private key material in files, independently of diskvault.

usage: scan_private.py [--deks-of STORE] PATH...
Every file under each PATH is checked: as PEM (each -----BEGIN block), as DER, and
every base64 or base64url run of 64+ characters decoded and tried as DER, each with
Python's `cryptography` private-key loaders. With --deks-of, the DEK of every layer
of every object of STORE is unwrapped (keys unsealed as unseal.py does) and each file
is searched for it raw, in hex and in base64. Prints one line per finding and exits
1 if there is any, 0 if none.
"""
import base64, binascii, json, os, re, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unseal
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

B64_RUN = re.compile(rb"[A-Za-z0-9+/_\-]{64,}={0,2}")
PEM_BLOCK = re.compile(rb"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.S)
BIG = 64 << 20


def is_private_der(b):
    try:
        serialization.load_der_private_key(b, password=None)
        return True
    except Exception:
        return False


def is_private_pem(b):
    try:
        serialization.load_pem_private_key(b, password=None)
        return True
    except Exception:
        return False


def key_findings(data):
    out = []
    for m in PEM_BLOCK.finditer(data):
        if is_private_pem(m.group(0)):
            out.append("a PEM private key")
    if is_private_der(data):
        out.append("a DER private key")
    for m in B64_RUN.finditer(data):
        run = m.group(0)
        for dec in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                b = dec(run + b"=" * (-len(run) % 4))
            except (binascii.Error, ValueError):
                continue
            if is_private_der(b):
                out.append("a base64 DER private key")
    return out


def layer_deks(store):
    vault = os.environ.get("DISKVAULT_VAULT", os.path.join(store, "vault"))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    deks = []
    for kind in ("disks", "snapshots", "images"):
        d = os.path.join(store, kind)
        if not os.path.isdir(d):
            continue
        for obj in os.listdir(d):
            p = os.path.join(d, obj, "meta.json")
            if not os.path.exists(p):
                continue
            with open(p) as f:
                meta = json.load(f)
            for layer in meta.get("layers", []):
                kid = layer["kid"]
                if kid.startswith("platform/"):
                    key = unseal.private_key(store, vault, "platform")
                else:
                    parts = kid.split("/")
                    key = unseal.private_key(store, vault, "vault", parts[-2], parts[-1])
                deks.append(key.decrypt(base64.b64decode(layer["wrappedKey"]), oaep))
    return deks


def main():
    args = sys.argv[1:]
    deks = []
    if args[:1] == ["--deks-of"]:
        deks = layer_deks(args[1])
        assert deks, "no layers found"
        args = args[2:]
        print("checking for %d DEKs" % len(deks))
    needles = []
    for k in deks:
        needles += [k, k.hex().encode(), base64.b64encode(k).rstrip(b"=")]
    found = 0
    for top in args:
        for root, _, files in os.walk(top):
            for n in files:
                p = os.path.join(root, n)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                size = os.path.getsize(p)
                with open(p, "rb") as f:
                    data = f.read(BIG)
                what = key_findings(data) if size < (4 << 20) else []
                what += ["a DEK" for nd in needles if nd in data]
                for w in what:
                    print("%s: %s" % (p, w))
                    found += 1
    sys.exit(1 if found else 0)


main()
