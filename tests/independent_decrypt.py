#!/usr/bin/env python3
"""Independent decryptor, written from docs/format.md alone (no diskvault code).

usage: independent_decrypt.py STORE DISK_NAME OUTPUT [DEK_HEX ...]
Writes the disk's plaintext to OUTPUT. Uses only Python's `cryptography`.
With DEK_HEX arguments (one per layer, layer 0 first) the DEKs come from elsewhere,
e.g. unwrapped by openssl; otherwise each layer is unwrapped here: platform layers
with STORE/keys/platform.pem, customer-key layers with the vault's version key
(STORE/vault/keys/NAME/VERSION.pem, or $DISKVAULT_VAULT/keys/...).
"""
import base64, hashlib, hmac, json, os, sys
from urllib.parse import urlparse
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

store, name, output = sys.argv[1:4]
given_deks = [bytes.fromhex(h) for h in sys.argv[4:]]
vault = os.environ.get("DISKVAULT_VAULT", os.path.join(store, "vault"))
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

def load_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)

def wrapping_key(kid):
    if kid.startswith("platform/"):
        return load_key(os.path.join(store, "keys", "platform.pem"))
    # https://VAULT.vault.azure.net/keys/NAME/VERSION
    _, keys, key_name, version = urlparse(kid).path.split("/")
    assert keys == "keys"
    return load_key(os.path.join(vault, "keys", key_name.lower(), version + ".pem"))

meta = None
for d in os.listdir(os.path.join(store, "disks")):
    p = os.path.join(store, "disks", d, "meta.json")
    if os.path.exists(p):
        m = json.load(open(p))
        if m["name"] == name:
            meta, disk_dir = m, os.path.join(store, "disks", d)
assert meta is not None, "disk not found"
assert meta["formatVersion"] == 1 and meta["dataUnitSize"] == 4096
U = 4096
expected_layers = {
    "EncryptionAtRestWithPlatformKey": 1,
    "EncryptionAtRestWithCustomerKey": 1,
    "EncryptionAtRestWithPlatformAndCustomerKeys": 2,
}[meta["encryption"]["type"]]
assert len(meta["layers"]) == expected_layers

layers = []
for i, layer in enumerate(meta["layers"]):
    assert layer["alg"] == "RSA-OAEP-256"
    if given_deks:
        dek = given_deks[i]
    else:
        dek = wrapping_key(layer["kid"]).decrypt(base64.b64decode(layer["wrappedKey"]), OAEP)
    nonce = bytes.fromhex(layer["nonce"])
    msg = "diskvault-keycheck-v1\n%s\n%d\n%s\n%s\n4096" % (meta["id"], i, layer["cipher"], nonce.hex())
    check = hmac.new(dek, msg.encode(), hashlib.sha256).hexdigest()
    assert check == layer["keyCheck"], "keyCheck mismatch in layer %d" % i
    layers.append((layer["cipher"], dek, nonce))

def decrypt_unit(index, unit):
    # Layer 0 was applied to the plaintext first, so it comes off last.
    for cipher, dek, nonce in reversed(layers):
        if cipher == "aes-256-xts":
            d = Cipher(algorithms.AES(dek), modes.XTS(index.to_bytes(16, "little"))).decryptor()
        elif cipher == "aes-256-ctr":
            ctr = (int.from_bytes(nonce, "big") + index * U // 16) % (1 << 128)
            d = Cipher(algorithms.AES(dek), modes.CTR(ctr.to_bytes(16, "big"))).decryptor()
        else:
            raise SystemExit("unknown cipher " + cipher)
        unit = d.update(unit) + d.finalize()
    return unit

size = meta["sizeBytes"]
with open(os.path.join(disk_dir, "data"), "rb") as src, open(output, "wb") as out:
    index = 0
    while index * U < size:
        unit = src.read(U)
        unit = unit + bytes(U - len(unit))
        plain = bytes(U) if unit == bytes(U) else decrypt_unit(index, unit)
        out.write(plain[: min(U, size - index * U)])
        index += 1
