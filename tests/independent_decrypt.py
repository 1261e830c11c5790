#!/usr/bin/env python3
"""Independent decryptor, written from docs/format.md alone (no diskvault code).

usage: independent_decrypt.py [--kind disk|snapshot|image] STORE NAME OUTPUT [DEK_HEX ...]
Writes the plaintext of the disk, snapshot or image NAME to OUTPUT. NAME may also be
given as disks/NAME, snapshots/NAME or images/NAME; the default kind is disk.
Uses only Python's `cryptography` and the standard library.
With DEK_HEX arguments (one per layer, layer 0 first; during a rekey then one per
rekey layer) the DEKs come from elsewhere, e.g. unwrapped by openssl; otherwise each
layer is unwrapped here: platform layers with the platform key, customer-key layers
with the vault's version key, each unsealed as unseal.py (beside this file) does with
the store's key-encryption key (DISKVAULT_HOST_KEY, DISKVAULT_PASSPHRASE_FILE or
DISKVAULT_KEK_HEX); the vault is STORE/vault or $DISKVAULT_VAULT.
"""
import argparse, base64, bisect, hashlib, hmac, json, os, re, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unseal
from urllib.parse import urlparse
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KIND_DIRS = {"disk": "disks", "snapshot": "snapshots", "image": "images"}
U = 4096
ZERO = bytes(U)
ID_RE = re.compile(r"^[0-9a-f]{32}$")

ap = argparse.ArgumentParser()
ap.add_argument("--kind", choices=sorted(KIND_DIRS))
ap.add_argument("store")
ap.add_argument("name")
ap.add_argument("output")
ap.add_argument("deks", nargs="*")
args = ap.parse_args()
store, name, output = args.store, args.name, args.output
kind = args.kind
if "/" in name:
    prefix, name = name.split("/", 1)
    by_dir = {d: k for k, d in KIND_DIRS.items()}
    if prefix not in by_dir or (kind and kind != by_dir[prefix]):
        raise SystemExit("NAME must be disks/NAME, snapshots/NAME or images/NAME")
    kind = by_dir[prefix]
kind = kind or "disk"
given_deks = [bytes.fromhex(h) for h in args.deks]
vault = os.environ.get("DISKVAULT_VAULT", os.path.join(store, "vault"))
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def wrapping_key(kid):
    if kid.startswith("platform/"):
        return unseal.private_key(store, vault, "platform")
    # https://VAULT.vault.azure.net/keys/NAME/VERSION
    _, keys, key_name, version = urlparse(kid).path.split("/")
    assert keys == "keys"
    return unseal.private_key(store, vault, "vault", key_name, version)


# Find the object: KIND/ID/meta.json whose name matches. ID.creating / ID.deleted
# directories are interrupted creates and deletes, not objects.
meta = None
kind_dir = os.path.join(store, KIND_DIRS[kind])
for d in sorted(os.listdir(kind_dir)):
    p = os.path.join(kind_dir, d, "meta.json")
    if ID_RE.match(d) and os.path.exists(p):
        with open(p) as f:
            m = json.load(f)
        if m["name"] == name:
            assert meta is None, "two objects named %s" % name
            assert m["id"] == d, "id does not match its directory"
            meta, obj_dir = m, os.path.join(kind_dir, d)
assert meta is not None, "%s %s not found" % (kind, name)
assert meta["dataUnitSize"] == U
stack = meta.get("stack", [])
if meta["formatVersion"] == 1:
    assert not stack and "keyCheckId" not in meta, "formatVersion 1 has no stack"
    assert kind == "disk", "a snapshot or image always has formatVersion 2"
elif meta["formatVersion"] == 2:
    assert stack, "formatVersion 2 needs a stack"
    assert all(ID_RE.match(s) for s in stack) and len(set(stack)) == len(stack)
else:
    raise SystemExit("unsupported formatVersion %r" % meta["formatVersion"])
# The keyCheck binds the DEKs to the object that first had them.
dek_id = meta.get("keyCheckId", meta["id"])
assert ID_RE.match(dek_id)
expected_layers = {
    "EncryptionAtRestWithPlatformKey": 1,
    "EncryptionAtRestWithCustomerKey": 1,
    "EncryptionAtRestWithPlatformAndCustomerKeys": 2,
}[meta["encryption"]["type"]]
assert len(meta["layers"]) == expected_layers


def unlock(layer_list, dek_id):
    out = []
    for i, layer in enumerate(layer_list):
        assert layer["alg"] == "RSA-OAEP-256"
        if given_deks:
            dek = given_deks.pop(0)
        else:
            wrapped = base64.b64decode(layer["wrappedKey"], validate=True)
            dek = wrapping_key(layer["kid"]).decrypt(wrapped, OAEP)
        nonce = bytes.fromhex(layer["nonce"])
        msg = "diskvault-keycheck-v1\n%s\n%d\n%s\n%s\n4096" % (dek_id, i, layer["cipher"], nonce.hex())
        check = hmac.new(dek, msg.encode(), hashlib.sha256).hexdigest()
        assert check == layer["keyCheck"], "keyCheck mismatch in layer %d" % i
        out.append((layer["cipher"], dek, nonce))
    return out


layers = unlock(meta["layers"], dek_id)
rekey = meta.get("rekey")
# A rekey's new layers bind to rekey.keyCheckId, or to the object's own id.
new_layers = unlock(rekey["layers"], rekey.get("keyCheckId", meta["id"])) if rekey else None
boundary = rekey["boundary"] if rekey else 0


def decrypt_unit(index, unit):
    stack_of_ciphers = new_layers if index < boundary else layers
    # Layer 0 was applied to the plaintext first, so it comes off last.
    for cipher, dek, nonce in reversed(stack_of_ciphers):
        if cipher == "aes-256-xts":
            d = Cipher(algorithms.AES(dek), modes.XTS(index.to_bytes(16, "little"))).decryptor()
        elif cipher == "aes-256-ctr":
            ctr = (int.from_bytes(nonce, "big") + index * U // 16) % (1 << 128)
            d = Cipher(algorithms.AES(dek), modes.CTR(ctr.to_bytes(16, "big"))).decryptor()
        else:
            raise SystemExit("unknown cipher " + cipher)
        unit = d.update(unit) + d.finalize()
    return unit


def read_whiteouts(path):
    """Sorted, merged [start, end) unit ranges of a whiteout log; a torn or bad
    record ends the log."""
    ranges = []
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
        for o in range(0, len(data) - len(data) % 24, 24):
            rec = data[o : o + 24]
            start = int.from_bytes(rec[0:8], "little")
            count = int.from_bytes(rec[8:16], "little")
            if rec[16:24] != hashlib.sha256(rec[:16]).digest()[:8] or start + count >= 1 << 64:
                break
            if count:
                ranges.append((start, start + count))
    ranges.sort()
    merged = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def covers(ranges, n):
    i = bisect.bisect_right(ranges, (n, 1 << 64)) - 1
    return i >= 0 and ranges[i][0] <= n < ranges[i][1]


def read_stored(f, n):
    f.seek(n * U)
    b = f.read(U)
    return b + bytes(U - len(b))  # past the end of the file: zeros


# The files holding the object's data, top first, each with its whiteouts.
if not stack:
    sources = [(open(os.path.join(obj_dir, "data"), "rb"), [])]
else:
    deltas = os.path.join(store, "deltas")
    moved = stack == [meta["id"]] and not os.path.exists(os.path.join(deltas, meta["id"]))
    if moved and kind == "disk" and os.path.exists(os.path.join(obj_dir, "data")):
        # An interrupted move of a formatVersion 1 disk's data to its delta.
        sources = [(open(os.path.join(obj_dir, "data"), "rb"), [])]
    else:
        sources = [
            (open(os.path.join(deltas, did), "rb"), read_whiteouts(os.path.join(deltas, did + ".whiteouts")))
            for did in reversed(stack)
        ]


def stored_unit(n):
    """Unit n's ciphertext, or None for a unit that reads as zeros."""
    for f, whiteouts in sources:
        c = read_stored(f, n)
        if c != ZERO:
            return c
        if covers(whiteouts, n):
            return None
    return None


size = meta["sizeBytes"]
with open(output, "wb") as out:
    index = 0
    while index * U < size:
        unit = stored_unit(index)
        plain = ZERO if unit is None else decrypt_unit(index, unit)
        out.write(plain[: min(U, size - index * U)])
        index += 1
