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

/// IEEE 1619-2007 vectors 11-14: vector 10's key and plaintext, data units 0xffff,
/// 0xffffff, 0xffffffff and 0xffffffffff.
const V11_CT: &str = "
77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11
e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2
469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d
3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201
3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179
8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a
aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6
9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80
470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a
bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0
18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75
bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63
094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a
7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68
6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090
54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803";
const V12_CT: &str = "
e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200
a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba049
9298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a8
7815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e1
9110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf
5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e
62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6
e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879
a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe0
97b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964
c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799d
a3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7a
f08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2
480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace
231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36
ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826";
const V13_CT: &str = "
bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5
520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1
c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac
7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e
919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d3
50875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5
69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed9
0fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c
1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053
027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7
5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df
73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00
77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460
d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155
6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88c
f6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220";
const V14_CT: &str = "
64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed23
50eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80
8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604
e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4
a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b
50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434
631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d8
76c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff
3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41b
f6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6
85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa
6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc
e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a
0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546
81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de
6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9";

/// (data unit sequence number, ciphertext) of vectors 10-14.
const IEEE_VECTORS: [(u128, &str); 5] = [
    (0xff, V10_CT),
    (0xffff, V11_CT),
    (0xffffff, V12_CT),
    (0xffffffff, V13_CT),
    (0xffffffffff, V14_CT),
];

/// Every XTS backend this CPU runs.
fn backends() -> Vec<XtsBackend> {
    XtsBackend::ALL
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}

fn xts(key: &[u8], backend: XtsBackend) -> Xts256 {
    Xts256::with_backend(key, backend).expect("available backend")
}

#[test]
fn xts_ieee1619_vectors_10_to_14_on_every_backend() {
    let pt: Vec<u8> = (0..512).map(|i| i as u8).collect();
    for backend in backends() {
        let x = xts(&h(V10_KEY), backend);
        for (unit, ct) in IEEE_VECTORS {
            let mut buf = pt.clone();
            x.encrypt_unit(unit, &mut buf);
            assert_eq!(hex(&buf), hex(&h(ct)), "{backend:?}, unit {unit:#x}");
            x.decrypt_unit(unit, &mut buf);
            assert_eq!(buf, pt, "{backend:?}, unit {unit:#x}");
        }
    }
}

#[test]
fn xts_new_and_data_cipher_use_the_fastest_backend() {
    let best = backends()[0];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("pclmulqdq") {
        assert_ne!(best, XtsBackend::Portable);
    }
    assert_eq!(Xts256::new(&[3; 64]).backend(), best);
    let c = DataCipher::new(CipherKind::Aes256Xts, &Secret::new(vec![3; 64]), &[]).unwrap();
    let DataCipher::Xts(x) = c else {
        panic!("XTS cipher")
    };
    assert_eq!(x.backend(), best);
}

/// A seeded xorshift64 stream, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every backend against the portable one, for every unit length (so every tail shape)
/// and unit indices that fill either or both 64-bit halves of the 128-bit index.
#[test]
fn xts_backends_agree_on_every_unit_length() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let key = rng.bytes(64);
    let reference = xts(&key, XtsBackend::Portable);
    let units = [
        0,
        1,
        u64::MAX as u128,
        1 << 64,
        (1 << 127) + 12345,
        u128::MAX,
        (rng.next() as u128) << 64 | rng.next() as u128,
    ];
    for backend in backends() {
        let x = xts(&key, backend);
        for len in (16..=4096).step_by(16) {
            for unit in units {
                let pt = rng.bytes(len);
                let (mut ours, mut theirs) = (pt.clone(), pt.clone());
                x.encrypt_unit(unit, &mut ours);
                reference.encrypt_unit(unit, &mut theirs);
                assert_eq!(ours, theirs, "{backend:?} encrypt, {len} B, unit {unit:#x}");
                x.decrypt_unit(unit, &mut ours);
                assert_eq!(ours, pt, "{backend:?} round trip, {len} B, unit {unit:#x}");
                // Decrypting arbitrary data must agree too, not just round-trip.
                theirs.copy_from_slice(&ours);
                x.decrypt_unit(unit, &mut ours);
                reference.decrypt_unit(unit, &mut theirs);
                assert_eq!(ours, theirs, "{backend:?} decrypt, {len} B, unit {unit:#x}");
            }
        }
    }
}

/// `encrypt_units` over 64 KiB equals the portable `encrypt_unit` per 4 KiB unit, with
/// unit indices crossing 2^64.
#[test]
fn xts_multi_unit_buffer_matches_per_unit() {
    let mut rng = XorShift(42);
    let key = rng.bytes(64);
    let pt = rng.bytes(16 * DATA_UNIT);
    let first = (1u128 << 64) - 5;
    let reference = xts(&key, XtsBackend::Portable);
    let mut per_unit = pt.clone();
    for (i, unit) in per_unit.chunks_exact_mut(DATA_UNIT).enumerate() {
        reference.encrypt_unit(first + i as u128, unit);
    }
    for backend in backends() {
        let x = xts(&key, backend);
        let mut whole = pt.clone();
        x.encrypt_units(first, &mut whole);
        assert_eq!(whole, per_unit, "{backend:?}");
        x.decrypt_units(first, &mut whole);
        assert_eq!(whole, pt, "{backend:?}");
        // Out of place: the same ciphertext, every byte of the output written (it
        // starts as garbage), the source untouched.
        let mut out = rng.bytes(pt.len());
        x.encrypt_units_from(first, &pt, &mut out);
        assert_eq!(out, per_unit, "{backend:?} out of place");
    }
    // Through DataCipher, for both ciphers: out of place equals copy-then-in-place.
    for kind in CipherKind::ALL {
        let key = Secret::new(rng.bytes(kind.key_len()));
        let c = DataCipher::new(kind, &key, &rng.bytes(kind.nonce_len())).unwrap();
        let mut in_place = pt.clone();
        c.encrypt_units(77, &mut in_place);
        let mut out = rng.bytes(pt.len());
        c.encrypt_units_from(77, &pt, &mut out);
        assert_eq!(out, in_place, "{kind}");
    }
}

#[test]
#[should_panic(expected = "differ in length")]
fn xts_out_of_place_needs_equal_lengths() {
    Xts256::new(&[1; 64]).encrypt_units_from(0, &[0; DATA_UNIT], &mut [0; 2 * DATA_UNIT]);
}

#[test]
#[should_panic(expected = "whole 4096-byte data units")]
fn xts_rejects_a_partial_unit_in_a_buffer() {
    Xts256::new(&[1; 64]).encrypt_units(0, &mut [0; DATA_UNIT + 16]);
}

#[test]
#[should_panic(expected = "multiple of 16 bytes")]
fn xts_rejects_a_unit_that_is_not_whole_blocks() {
    Xts256::new(&[1; 64]).encrypt_unit(0, &mut [0; 24]);
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
    c.decrypt_units(first_unit, &mut ours);
    assert_eq!(ours, data);
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
