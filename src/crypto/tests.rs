//! Known-answer tests (IEEE 1619, NIST SP 800-38A) and cross-checks against
//! independent implementations (Python `cryptography`, the openssl CLI).

use super::wrap::{hex, unhex, RsaKey};
use super::*;
use crate::testkit::{openssl_oaep_unwrap, pattern};
use std::io::Write;
use std::process::{Command, Stdio};

fn h(s: &str) -> Vec<u8> {
    unhex(&s.split_whitespace().collect::<String>()).expect("hex")
}

/// IEEE 1619-2007 vector 10: XTS-AES-256, data unit 0xff, 512 bytes.
const V10_KEY: &str = "2718281828459045235360287471352662497757247093699959574966967627
                       3141592653589793238462643383279502884197169399375105820974944592";
const V10_CT: &str = "
1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b
5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd
5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0
c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca
2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0
b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f
93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec
583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a
84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1
505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae
9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29
a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac
6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f
645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385
1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa
773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";

#[test]
fn xts_ieee1619_vector_10() {
    let x = Xts256::new(&h(V10_KEY));
    let pt: Vec<u8> = (0..512).map(|i| i as u8).collect();
    let mut buf = pt.clone();
    x.encrypt_unit(0xff, &mut buf);
    assert_eq!(hex(&buf), hex(&h(V10_CT)));
    x.decrypt_unit(0xff, &mut buf);
    assert_eq!(buf, pt);
}

#[test]
fn xts_tweak_is_little_endian_unit_index() {
    // Same data in different units must differ, and a unit index above 2^64 must work.
    let x = Xts256::new(&[9u8; 64]);
    let mut a = [5u8; 4096];
    let mut b = [5u8; 4096];
    x.encrypt_unit(1, &mut a);
    x.encrypt_unit(1 << 64, &mut b);
    assert_ne!(a, b);
}

/// NIST SP 800-38A F.5.5, CTR-AES256.Encrypt.
#[test]
fn ctr_sp800_38a_f55() {
    let key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
    let iv = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
    let pt = h(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
    );
    let ct = h(
        "601ec313775789a5b7a7f504bbf3d228 f443e3ca4d62b59aca84e990cacaf5c5
                2b0930daa23de94ce87017ba2d84988d dfc9c58db67aada613c2dd08457941a6",
    );
    let c = Ctr256::new(&key, &iv);
    let mut buf = pt.clone();
    c.apply(0, &mut buf);
    assert_eq!(buf, ct);
    // Any sub-range can be processed on its own: the counter follows the offset.
    let mut tail = pt[32..].to_vec();
    c.apply(32, &mut tail);
    assert_eq!(tail, ct[32..]);
}

fn python(script: &str, stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is required for cross-checks");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 failed (is python3-cryptography installed?)"
    );
    out.stdout
}

/// Our XTS over 4 KiB units against Python `cryptography` (OpenSSL's XTS).
#[test]
fn xts_matches_python_cryptography() {
    let key = pattern(1, 64);
    let data = pattern(2, 4 * DATA_UNIT);
    let first_unit: u64 = 0x1_0000_0007;
    let script = format!(
        r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = bytes.fromhex("{}")
data = sys.stdin.buffer.read()
out = b""
for i in range(len(data) // 4096):
    tweak = ({first_unit} + i).to_bytes(16, "little")
    e = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
    out += e.update(data[i*4096:(i+1)*4096]) + e.finalize()
sys.stdout.buffer.write(out)
"#,
        hex(&key)
    );
    let theirs = python(&script, &data);
    let c = DataCipher::new(CipherKind::Aes256Xts, &Secret::new(key), &[]).unwrap();
    let mut ours = data.clone();
    c.encrypt_units(first_unit, &mut ours);
    assert_eq!(ours, theirs);
}

#[test]
fn ctr_matches_python_cryptography_at_offsets() {
    let key = pattern(3, 32);
    let nonce = pattern(4, 16);
    let data = pattern(5, 3 * DATA_UNIT);
    let first_unit: u64 = 77;
    let script = format!(
        r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key, nonce = bytes.fromhex("{}"), int("{}", 16)
ctr = (nonce + {first_unit} * 4096 // 16) % (1 << 128)
e = Cipher(algorithms.AES(key), modes.CTR(ctr.to_bytes(16, "big"))).encryptor()
sys.stdout.buffer.write(e.update(sys.stdin.buffer.read()))
"#,
        hex(&key),
        hex(&nonce)
    );
    let theirs = python(&script, &data);
    let c = DataCipher::new(CipherKind::Aes256Ctr, &Secret::new(key), &nonce).unwrap();
    let mut ours = data.clone();
    c.encrypt_units(first_unit, &mut ours);
    assert_eq!(ours, theirs);
}

#[test]
fn ctr_counter_wraps_at_2_pow_128() {
    let key = [1u8; 32];
    let nonce = [0xffu8; 16];
    let c = Ctr256::new(&key, &nonce);
    let mut a = [0u8; 32];
    c.apply(0, &mut a);
    // Block 1 uses counter 0 after wrapping.
    let z = Ctr256::new(&key, &[0u8; 16]);
    let mut b = [0u8; 16];
    z.apply(0, &mut b);
    assert_eq!(a[16..], b);
}

#[test]
fn wrap_round_trip_and_tamper() {
    let k = RsaKey::generate(2048).unwrap();
    let dek = Secret::random(64).unwrap();
    let w = k.wrap(&dek).unwrap();
    assert_eq!(w.len(), 256);
    assert_eq!(k.unwrap(&w).unwrap().expose(), dek.expose());
    let mut bad = w.clone();
    bad[100] ^= 1;
    assert!(k.unwrap(&bad).is_err());
    let other = RsaKey::generate(2048).unwrap();
    assert!(other.unwrap(&w).is_err());
    assert!(RsaKey::generate(1024).is_err());
    // PEM round trip keeps the key.
    let again = RsaKey::from_pem(&k.to_pkcs8_pem().unwrap()).unwrap();
    assert_eq!(again.fingerprint(), k.fingerprint());
}

/// A wrapped DEK unwraps with `openssl pkeyutl` (OAEP, SHA-256, MGF1-SHA-256).
#[test]
fn wrap_unwraps_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let k = RsaKey::generate(2048).unwrap();
    let pem = dir.path().join("k.pem");
    std::fs::write(&pem, k.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    let dek = Secret::new(pattern(9, 64));
    let unwrapped = openssl_oaep_unwrap(&pem, &k.wrap(&dek).unwrap(), dir.path());
    assert_eq!(unwrapped, dek.expose());
}

#[test]
fn cipher_names_parse() {
    for c in CipherKind::ALL {
        assert_eq!(c.name().parse::<CipherKind>().unwrap(), c);
    }
    assert!("aes-128-ecb".parse::<CipherKind>().is_err());
    assert!(DataCipher::new(CipherKind::Aes256Xts, &Secret::new(vec![0; 32]), &[]).is_err());
}

#[test]
fn secrets_do_not_print() {
    let s = Secret::new(vec![0x41; 8]);
    assert!(!format!("{s:?}").contains("41"));
}
