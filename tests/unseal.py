#!/usr/bin/env python3
"""Unseals diskvault private keys, written from docs/format.md alone (no diskvault code).

usage: unseal.py STORE platform OUT.pem
       unseal.py STORE vault KEYNAME VERSION OUT.pem
Writes the clear PKCS#8 PEM of the platform key or of one vault key version to OUT.pem
(mode 0600). The key-encryption key comes from DISKVAULT_HOST_KEY (or the header's
hostKey) for a host seal, DISKVAULT_PASSPHRASE_FILE for a passphrase seal (Argon2id via
python3-argon2), or DISKVAULT_KEK_HEX (any seal, e.g. a KEK unsealed by tpm2_unseal).
A store whose keys are clear (no keyProtection) is read as it is. The vault is
STORE/vault or $DISKVAULT_VAULT.
Uses only Python's `cryptography`, `argon2` (passphrase seals) and the standard library.
"""
import base64, hashlib, hmac, json, os, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def header(store):
    with open(os.path.join(store, "diskvault.json")) as f:
        return json.load(f)


def kek(store, h):
    p = h["keyProtection"]
    if os.environ.get("DISKVAULT_KEK_HEX"):
        k = bytes.fromhex(os.environ["DISKVAULT_KEK_HEX"])
    elif p["seal"] == "host":
        path = os.environ.get("DISKVAULT_HOST_KEY") or os.path.join(store, p["hostKey"])
        with open(path, "rb") as f:
            k = f.read()
        assert len(k) == 32, "a host key is 32 bytes"
    elif p["seal"] == "passphrase":
        from argon2.low_level import Type, hash_secret_raw
        with open(os.environ["DISKVAULT_PASSPHRASE_FILE"], "rb") as f:
            pw = f.read()
        if pw.endswith(b"\n"):
            pw = pw[:-1]
            if pw.endswith(b"\r"):
                pw = pw[:-1]
        a = p["argon2"]
        k = hash_secret_raw(pw, base64.b64decode(a["salt"]), time_cost=a["iterations"],
                            memory_cost=a["memoryKib"], parallelism=a["parallelism"],
                            hash_len=32, type=Type.ID, version=19)
    else:
        raise SystemExit("a tpm2 seal: unseal the KEK with tpm2_unseal and give DISKVAULT_KEK_HEX")
    fp = hmac.new(k, b"diskvault-kek-fingerprint", hashlib.sha256).digest()[:16].hex()
    assert fp == p["kekFingerprint"], "this KEK is not the store's (fingerprint differs)"
    return k


def sealing_key(store):
    h = header(store)
    k = kek(store, h)
    p = h["keyProtection"]
    blob = base64.b64decode(p["sealingKey"])
    aad = b"diskvault-sealing-key/1\0" + h["storeId"].encode() + b"\0" + p["seal"].encode()
    return h["storeId"], AESGCM(k).decrypt(blob[:12], blob[12:], aad)


def open_sealed(path, store_id, ksk, role, kid):
    with open(path) as f:
        s = json.load(f)
    assert s["format"] == "diskvault-sealed-key" and s["version"] == 1
    assert s["role"] == role and s["id"] == kid, "sealed for another key"
    spki = base64.b64decode(s["publicKey"])
    blob = base64.b64decode(s["sealed"])
    aad = b"\0".join([b"diskvault-sealed-key/1", store_id.encode(), role.encode(), kid.encode(), spki])
    der = AESGCM(ksk).decrypt(blob[:12], blob[12:], aad)
    key = serialization.load_der_private_key(der, password=None)
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pub == spki, "the private key does not match its public key"
    return key


def private_key(store, vault, role, name=None, version=None):
    """The platform key (role 'platform') or a vault key version (role 'vault')."""
    if role == "platform":
        d, stem, kid, r = os.path.join(store, "keys"), "platform", "platform", "platform"
    else:
        with open(os.path.join(vault, "vault.json")) as f:
            vname = json.load(f)["name"]
        d = os.path.join(vault, "keys", name.lower())
        if not os.path.isdir(d):
            d = os.path.join(vault, "deleted-keys", name.lower())
        stem, kid, r = version, "%s/%s/%s" % (vname, name.lower(), version), "vault-key"
    sealed = os.path.join(d, stem + ".key")
    if os.path.exists(sealed):
        store_id, ksk = sealing_key(store)
        return open_sealed(sealed, store_id, ksk, r, kid)
    with open(os.path.join(d, stem + ".pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


if __name__ == "__main__":
    a = sys.argv[1:]
    store = a[0]
    vault = os.environ.get("DISKVAULT_VAULT", os.path.join(store, "vault"))
    if a[1] == "platform" and len(a) == 3:
        key, out = private_key(store, vault, "platform"), a[2]
    elif a[1] == "vault" and len(a) == 5:
        key, out = private_key(store, vault, "vault", a[2], a[3]), a[4]
    else:
        raise SystemExit(__doc__)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
