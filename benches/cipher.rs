//! In-process data-cipher throughput over 1 MiB buffers of 4 KiB data units.
//! Compare with `openssl speed -evp aes-256-xts` (scripts/bench prints both).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diskvault::crypto::{CipherKind, DataCipher, Secret, Xts256, XtsBackend};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cipher");
    let mut buf = vec![0x5au8; 1 << 20];
    g.throughput(Throughput::Bytes(buf.len() as u64));
    for kind in CipherKind::ALL {
        let key = Secret::new((0..kind.key_len() as u8).collect());
        let nonce = vec![7u8; kind.nonce_len()];
        let cipher = DataCipher::new(kind, &key, &nonce).unwrap();
        g.bench_function(format!("{}-encrypt-1MiB", kind.name()), |b| {
            b.iter(|| cipher.encrypt_units(black_box(12345), black_box(&mut buf)))
        });
        g.bench_function(format!("{}-decrypt-1MiB", kind.name()), |b| {
            b.iter(|| cipher.decrypt_units(black_box(12345), black_box(&mut buf)))
        });
    }
    // The XTS backends DataCipher passed over (it takes the fastest), for comparison.
    let key: Vec<u8> = (0..64).collect();
    let best = Xts256::new(&key).backend();
    for backend in XtsBackend::ALL.into_iter().filter(|&b| b != best) {
        let Some(x) = Xts256::with_backend(&key, backend) else {
            continue;
        };
        g.bench_function(format!("aes-256-xts-{backend:?}-encrypt-1MiB"), |b| {
            b.iter(|| x.encrypt_units(black_box(12345), black_box(&mut buf)))
        });
        g.bench_function(format!("aes-256-xts-{backend:?}-decrypt-1MiB"), |b| {
            b.iter(|| x.decrypt_units(black_box(12345), black_box(&mut buf)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
