//! In-process data-cipher throughput over 1 MiB buffers of 4 KiB data units.
//! Compare with `openssl speed -evp aes-256-xts` (scripts/bench prints both).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diskvault::crypto::{CipherKind, DataCipher, Secret};
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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
