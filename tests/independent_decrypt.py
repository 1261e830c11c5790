#!/usr/bin/env python3
"""Independent decryptor, written from docs/format.md alone (no diskvault code).

usage: independent_decrypt.py STORE DISK_NAME OUTPUT
Writes the disk's plaintext to OUTPUT. Uses only Python's `cryptography`.
"""
import base64, hashlib, hmac, json, os, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

store, name, output = sys.argv[1:4]
with open(os.path.join(store, "keys", "platform.pem"), "rb") as f:
    platform = serialization.load_pem_private_key(f.read(), password=None)

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

layers = []
for i, layer in enumerate(meta["layers"]):
    assert layer["alg"] == "RSA-OAEP-256"
    dek = platform.decrypt(
        base64.b64decode(layer["wrappedKey"]),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    nonce = bytes.fromhex(layer["nonce"])
    msg = "diskvault-keycheck-v1\n%s\n%d\n%s\n%s\n4096" % (meta["id"], i, layer["cipher"], nonce.hex())
    check = hmac.new(dek, msg.encode(), hashlib.sha256).hexdigest()
    assert check == layer["keyCheck"], "keyCheck mismatch"
    layers.append((layer["cipher"], dek, nonce))

def decrypt_unit(index, unit):
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
