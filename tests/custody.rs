//! Key custody: no usable private key in the store or vault; a copy without its KEK
//! decrypts nothing; passphrase and TPM2 seals; sealing old stores, crash-safe.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scan_private.py");
const DECRYPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_decrypt.py");

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// diskvault with `env` over the test's environment.
fn dv(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run diskvault")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs scan_private.py over `paths` (with the DEKs of `deks_of`'s objects); its
/// findings, one per line.
fn scan(deks_of: Option<&Path>, paths: &[&Path], env: &[(&str, &str)]) -> Vec<String> {
    let mut c = Command::new("python3");
    c.arg(SCAN).envs(env.iter().copied());
    if let Some(s) = deks_of {
        c.arg("--deks-of").arg(s);
    }
    let out = c.args(paths).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("checking"))
        .map(String::from)
        .collect();
    assert_eq!(
        out.status.code(),
        Some(if found.is_empty() { 0 } else { 1 }),
        "scan_private.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    found
}

/// (path, sha256) of every file under `dir`: to show that nothing changed.
fn tree_sums(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let s = sha256_hex(&std::fs::read(&p).unwrap());
            (p, s)
        })
        .collect();
    v.sort();
    v
}

/// A host key file of 32 random bytes, mode 0600.
fn new_host_key(at: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(at, diskvault::crypto::random_bytes(32).unwrap()).unwrap();
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600)).unwrap();
    at.to_path_buf()
}

/// After every operation that makes or uses keys, nothing in the store or vault is a
/// private key, and no file holds a DEK. The scanner is shown to find both first.
#[test]
fn no_private_key_or_dek_in_the_store() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(&m, &[("c1", "4M", "Premium_LRS")]);
    m.create("p1", "4M");
    std::fs::write(m.disk("p1"), pattern(1, 4096)).unwrap();
    std::fs::write(m.disk("c1"), pattern(2, 4096)).unwrap();
    run_ok(&["key", "rotate", "k1", "--store", &s]);
    let byok = m.dir.path().join("byok.pem");
    openssl_genrsa(&byok);
    run_ok(&[
        "key",
        "import",
        "b1",
        "--pem",
        byok.to_str().unwrap(),
        "--store",
        &s,
    ]);
    run_ok(&["key", "create", "k3", "--size", "3072", "--store", &s]);
    run_ok(&[
        "snapshot", "create", "p1-s", "--source", "p1", "--store", &s,
    ]);
    run_ok(&[
        "snapshot", "create", "c1-s", "--source", "c1", "--store", &s,
    ]);
    m.umount();

    // The scanner finds a clear key and a DEK where there are some.
    let control = m.dir.path().join("control");
    std::fs::create_dir(&control).unwrap();
    std::fs::copy(&byok, control.join("k.pem")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.backing_dir("p1").join("meta.json")).unwrap())
            .unwrap();
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(meta["layers"][0]["wrappedKey"].as_str().unwrap())
        .unwrap();
    let dek = openssl_oaep_unwrap(
        &unsealed_platform_pem(&m.store, m.dir.path()),
        &wrapped,
        m.dir.path(),
    );
    std::fs::write(
        control.join("dek.txt"),
        dek.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )
    .unwrap();
    let found = scan(Some(&m.store), &[&control], &[]);
    assert!(
        found
            .iter()
            .any(|f| f.ends_with("k.pem: a PEM private key")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.ends_with("dek.txt: a DEK")),
        "{found:?}"
    );
    std::fs::remove_dir_all(&control).unwrap();
    std::fs::remove_file(m.dir.path().join("platform-unsealed.pem")).unwrap();

    let found = scan(Some(&m.store), &[&m.store], &[]);
    assert!(found.is_empty(), "private material in the store: {found:?}");
    // Every key file is sealed, mode 0600.
    for p in walk(&m.store) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.ends_with(".pem"), "a clear key file: {}", p.display());
        if name.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    // The key's version files say how they are sealed, and vault show tells.
    let v: serde_json::Value =
        serde_json::from_str(&run_ok(&["vault", "show", "--store", &s])).unwrap();
    let kp = &v["properties"]["keyProtection"];
    assert_eq!(kp["seal"], "host", "{v}");
    assert_eq!(kp["kekFingerprint"].as_str().unwrap().len(), 32, "{v}");
    m.mount();
    assert_eq!(
        std::fs::read(m.disk("c1")).unwrap()[..4096],
        pattern(2, 4096)[..]
    );
}

/// A copy of the store made without its host key mounts to nothing and says why,
/// changing nothing; with the key it reads everything, here and independently.
#[test]
fn a_copy_without_its_kek_decrypts_nothing() {
    let mut m = Mounted::new();
    cmk_setup(&m, &[("c1", "4M", "Premium_LRS")]);
    m.create("p1", "4M");
    std::fs::write(m.disk("p1"), pattern(3, 8192)).unwrap();
    std::fs::write(m.disk("c1"), pattern(4, 8192)).unwrap();
    m.umount();
    let copy = m.dir.path().join("copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&m.store)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    let mnt = m.dir.path().join("mnt2");
    std::fs::create_dir(&mnt).unwrap();
    let before = tree_sums(&copy);
    let (c, mp) = (copy.to_str().unwrap(), mnt.to_str().unwrap());

    let missing = m.dir.path().join("no-such-host.key");
    let miss = missing.to_str().unwrap();
    let e = err(dv(
        &["mount", "--no-create", c, mp],
        &[("DISKVAULT_HOST_KEY", miss)],
    ));
    assert!(
        e.contains(miss) && e.contains("does not exist") && e.contains("--host-key"),
        "{e}"
    );
    assert!(
        !missing.exists(),
        "a missing host key is never made at mount"
    );
    let wrong = new_host_key(&m.dir.path().join("wrong.key"));
    let w = wrong.to_str().unwrap();
    // A host key others can read is refused, whatever it holds.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(dv(
            &["mount", "--no-create", c, mp],
            &[("DISKVAULT_HOST_KEY", w)],
        ));
        assert!(
            e.contains("can be read by others") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let e = err(dv(
        &["mount", "--no-create", c, mp],
        &[("DISKVAULT_HOST_KEY", w)],
    ));
    assert!(
        e.contains("is not the one this store was sealed with"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "nothing mounted"
    );
    // Commands that need no private key still work; the disks say why they can't be read.
    let list = ok(dv(
        &["disk", "list", "--store", c, "-o", "json"],
        &[("DISKVAULT_HOST_KEY", w)],
    ));
    assert!(list.contains("\"p1\""), "{list}");
    // The independent decryptor refuses too.
    let o = Command::new("python3")
        .arg(DECRYPT)
        .arg(&copy)
        .arg("p1")
        .arg(m.dir.path().join("out"))
        .env("DISKVAULT_HOST_KEY", w)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(
        tree_sums(&copy),
        before,
        "a refused mount changed the store"
    );

    // With its key, everything reads, through the mount and independently.
    let mut m2 = Mounted::attach(m.dir.path(), &copy, &mnt);
    assert_eq!(
        std::fs::read(m2.disk("p1")).unwrap()[..8192],
        pattern(3, 8192)[..]
    );
    assert_eq!(
        std::fs::read(m2.disk("c1")).unwrap()[..8192],
        pattern(4, 8192)[..]
    );
    m2.umount();
    for d in ["p1", "c1"] {
        let out = m.dir.path().join(format!("{d}.raw"));
        let st = Command::new("python3")
            .arg(DECRYPT)
            .arg(&copy)
            .arg(d)
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "independent decryption of {d}");
        let want = pattern(if d == "p1" { 3 } else { 4 }, 8192);
        assert_eq!(std::fs::read(&out).unwrap()[..8192], want[..]);
    }
}

/// A passphrase seal: the right passphrase mounts, a wrong one changes nothing and
/// says so in one line; listing needs no passphrase. The independent unsealer
/// (Argon2id from python3-argon2) decrypts with it.
#[test]
fn passphrase_seal() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("st");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let good = dir.path().join("pass");
    std::fs::write(&good, "correct horse battery staple\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "correct horse battery stapler\n").unwrap();
    let (s, mp, g) = (
        store.to_str().unwrap(),
        mnt.to_str().unwrap(),
        good.to_str().unwrap(),
    );
    // No host key is involved: point it where none is.
    let nohost = dir.path().join("none.key");
    let nh = ("DISKVAULT_HOST_KEY", nohost.to_str().unwrap());
    ok(dv(
        &["init", s, "--seal", "passphrase", "--passphrase-file", g],
        &[nh],
    ));
    assert!(!nohost.exists());
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("diskvault.json")).unwrap()).unwrap();
    assert_eq!(h["keyProtection"]["seal"], "passphrase");
    assert_eq!(h["keyProtection"]["argon2"]["memoryKib"], 65536);
    ok(dv(&["mount", s, mp, "--passphrase-file", g], &[nh]));
    let mut m = Mounted::adopt(&store, &mnt);
    run_ok(&["disk", "create", "d1", "--size", "4M", "--store", s]);
    std::fs::write(m.disk("d1"), pattern(5, 4096)).unwrap();
    m.umount();

    let before = tree_sums(&store);
    let e = err(dv(
        &["mount", s, mp, "--passphrase-file", bad.to_str().unwrap()],
        &[nh],
    ));
    assert!(e.contains("wrong passphrase"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // Without one (no terminal here) the mount says how to give it.
    let e = err(dv(&["mount", s, mp], &[nh]));
    assert!(e.contains("--passphrase-file"), "{e}");
    assert_eq!(
        tree_sums(&store),
        before,
        "a refused mount changed the store"
    );
    // Listing opens no private key, so it needs no passphrase.
    let list = ok(dv(&["disk", "list", "--store", s, "-o", "tsv"], &[nh]));
    assert!(list.contains("d1"), "{list}");

    ok(dv(
        &["mount", s, mp],
        &[nh, ("DISKVAULT_PASSPHRASE_FILE", g)],
    ));
    let mut m = Mounted::adopt(&store, &mnt);
    assert_eq!(
        std::fs::read(m.disk("d1")).unwrap()[..4096],
        pattern(5, 4096)[..]
    );
    m.umount();
    let out = dir.path().join("d1.raw");
    let st = Command::new("python3")
        .arg(DECRYPT)
        .arg(&store)
        .arg("d1")
        .arg(&out)
        .env("DISKVAULT_PASSPHRASE_FILE", g)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(&out).unwrap()[..4096], pattern(5, 4096)[..]);
    assert!(scan(None, &[&store], &[]).is_empty());
}

/// vault reseal changes the KEK source without touching key files: host to
/// passphrase (the old host key then opens nothing), then to a host key kept beside
/// the store, recorded relative to it; the two moved together still mount.
#[test]
fn reseal_and_a_moved_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("st");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (s, mp) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    ok(dv(&["mount", s, mp], &[]));
    let mut m = Mounted::adopt(&store, &mnt);
    run_ok(&["disk", "create", "d1", "--size", "4M", "--store", s]);
    std::fs::write(m.disk("d1"), pattern(6, 4096)).unwrap();
    let e = run_err(&["vault", "reseal", "--seal", "host", "--store", s]);
    assert!(e.contains("unmount it first"), "{e}");
    m.umount();
    let key_files = |p: &Path| {
        let mut v: Vec<_> = walk(p)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|x| x == "key"))
            .map(|f| (f.clone(), std::fs::read(&f).unwrap()))
            .collect();
        v.sort();
        v
    };
    let files = key_files(&store);
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "p4ss").unwrap();
    let p = pass.to_str().unwrap();
    ok(dv(
        &[
            "vault",
            "reseal",
            "--seal",
            "passphrase",
            "--new-passphrase-file",
            p,
            "--store",
            s,
        ],
        &[],
    ));
    assert_eq!(key_files(&store), files, "reseal rewrote key files");
    let e = err(dv(&["mount", s, mp], &[]));
    assert!(e.contains("passphrase"), "{e}");

    // A host key on a removable device beside the store, recorded relative to it.
    let usb = dir.path().join("usb");
    std::fs::create_dir(&usb).unwrap();
    let hk = usb.join("host.key");
    ok(dv(
        &[
            "vault",
            "reseal",
            "--seal",
            "host",
            "--new-host-key",
            hk.to_str().unwrap(),
            "--store",
            s,
        ],
        &[("DISKVAULT_PASSPHRASE_FILE", p)],
    ));
    assert!(hk.exists());
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("diskvault.json")).unwrap()).unwrap();
    assert_eq!(h["keyProtection"]["hostKey"], "../usb/host.key", "{h}");
    // Move both; mount without DISKVAULT_HOST_KEY, by the recorded path alone.
    let moved = dir.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    std::fs::rename(&store, moved.join("st")).unwrap();
    std::fs::rename(&usb, moved.join("usb")).unwrap();
    let st2 = moved.join("st");
    let o = Command::new(bin())
        .args(["mount", st2.to_str().unwrap(), mp])
        .env_remove("DISKVAULT_HOST_KEY")
        .output()
        .unwrap();
    ok(o);
    let mut m = Mounted::adopt(&st2, &mnt);
    assert_eq!(
        std::fs::read(m.disk("d1")).unwrap()[..4096],
        pattern(6, 4096)[..]
    );
    m.umount();
}

fn copy_fixture(name: &str, to: &Path) {
    let src = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    assert!(Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(to)
        .status()
        .unwrap()
        .success());
    std::fs::create_dir_all(to.join("vault/deleted-keys")).unwrap();
}

fn fixture_sums(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}.sha256",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    text.lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap();
            let n = if n.contains('/') {
                n.to_string()
            } else {
                format!("disks/{n}")
            };
            (n, h.to_string())
        })
        .collect()
}

/// Mounts `store` and checks every object against its recorded sum.
fn mounts_and_reads(store: &Path, mnt: &Path, want: &[(String, String)], when: &str) {
    let o = dv(
        &[
            "mount",
            "--no-create",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "{when}: mount failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut m = Mounted::adopt(store, mnt);
    for (path, sum) in want {
        let data = std::fs::read(m.mnt.join(path)).unwrap();
        assert_eq!(&sha256_hex(&data), sum, "{when}: {path}");
    }
    m.umount();
}

/// Stores made before sealing mount with one warning, and `vault seal` seals them in
/// place; a kill -9 at every step leaves a store that mounts and reads, and the next
/// `vault seal` finishes without a clear copy left.
#[test]
fn old_stores_are_sealed_in_place_surviving_kill_9() {
    for (fixture, keys) in [("store-v2", 3usize), ("store-v1", 4)] {
        let want = fixture_sums(fixture);
        let mut plans = vec!["seal.header=1".to_string()];
        for n in 1..=keys {
            plans.push(format!("seal.sealed={n}"));
            plans.push(format!("seal.shredded={n}"));
            plans.push(format!("seal.cleared={n}"));
        }
        for plan in plans {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("st");
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).unwrap();
            copy_fixture(fixture, &store);
            let s = store.to_str().unwrap();
            assert!(
                !scan(None, &[&store], &[]).is_empty(),
                "the fixture has clear keys"
            );
            let o = dv(&["mount", "--no-create", s, mnt.to_str().unwrap()], &[]);
            let e = ok_err(&o);
            assert!(
                e.contains("keeps its private keys in clear") && e.contains("vault seal"),
                "{e}"
            );
            Mounted::adopt(&store, &mnt).umount();

            let o = dv(
                &["vault", "seal", "--store", s],
                &[("DISKVAULT_FAULT", &plan)],
            );
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                o.status.signal(),
                Some(9),
                "{plan}: not killed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            mounts_and_reads(
                &store,
                &mnt,
                &want,
                &format!("{fixture} after kill at {plan}"),
            );
            // It finishes what was left (or says there was nothing left, after the
            // last key's clear file went).
            let out = ok(dv(&["vault", "seal", "--store", s], &[]));
            assert!(
                out.contains("\"seal\": \"host\"")
                    || (plan == format!("seal.cleared={keys}") && out.contains("sealed already")),
                "{plan}: {out}"
            );
            let found = scan(Some(&store), &[&store], &[]);
            assert!(found.is_empty(), "{fixture} {plan}: {found:?}");
            mounts_and_reads(
                &store,
                &mnt,
                &want,
                &format!("{fixture} sealed after {plan}"),
            );
            let again = ok(dv(&["vault", "seal", "--store", s], &[]));
            assert!(again.contains("sealed already"), "{again}");
        }
    }
}

/// The stderr of a successful command.
fn ok_err(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A software TPM (swtpm) on a socket, stopped on drop.
struct Swtpm {
    state: PathBuf,
    sock: PathBuf,
    child: Option<std::process::Child>,
}

impl Swtpm {
    fn start(state: &Path) -> Swtpm {
        std::fs::create_dir_all(state).unwrap();
        let mut t = Swtpm {
            state: state.to_path_buf(),
            sock: state.join("sock"),
            child: None,
        };
        t.boot();
        t
    }

    fn boot(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "startup-clear,not-need-init"])
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state.display()))
            .arg("--server")
            .arg(format!("type=unixio,path={}", self.sock.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}.ctrl", self.sock.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("swtpm is needed (apt-get install swtpm swtpm-tools tpm2-tools)");
        self.child = Some(child);
        let sock = self.sock.clone();
        Mounted::wait_for(std::time::Duration::from_secs(10), || sock.exists())
            .expect("swtpm listens");
    }

    /// Stops it as a power cut would, and starts a new one on the same state.
    fn reboot(&mut self) {
        self.stop();
        self.boot();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tcti(&self) -> String {
        format!("swtpm:path={}", self.sock.display())
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TPM2 seal through swtpm: seal, reboot (a new swtpm on the same state), unseal.
/// With the TPM gone the mount refuses; another TPM can't unseal it.
#[test]
fn tpm2_seal_survives_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let mut tpm = Swtpm::start(&dir.path().join("tpm"));
    let store = dir.path().join("st");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (s, mp) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    let tcti = tpm.tcti();
    ok(dv(&["init", s, "--seal", "tpm2", "--tpm-tcti", &tcti], &[]));
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("diskvault.json")).unwrap()).unwrap();
    assert_eq!(h["keyProtection"]["seal"], "tpm2");
    assert_eq!(h["keyProtection"]["tpm2"]["tcti"], tcti.as_str());
    ok(dv(&["mount", s, mp], &[]));
    let mut m = Mounted::adopt(&store, &mnt);
    run_ok(&["disk", "create", "d1", "--size", "4M", "--store", s]);
    std::fs::write(m.disk("d1"), pattern(8, 4096)).unwrap();
    m.umount();

    tpm.reboot();
    ok(dv(&["mount", s, mp], &[]));
    let mut m = Mounted::adopt(&store, &mnt);
    assert_eq!(
        std::fs::read(m.disk("d1")).unwrap()[..4096],
        pattern(8, 4096)[..]
    );
    m.umount();

    tpm.stop();
    let e = err(dv(&["mount", s, mp], &[]));
    assert!(e.contains("TPM") && e.contains(&tcti), "{e}");
    // Another TPM (fresh state) has another seed: nothing unseals.
    let other = Swtpm::start(&dir.path().join("tpm-other"));
    let e = err(dv(&["mount", s, mp, "--tpm-tcti", &other.tcti()], &[]));
    assert!(e.contains("TPM"), "{e}");
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());
    assert!(scan(None, &[&store], &[]).is_empty());
}

/// The header is the store owner's to edit: a TCTI in it that would run a program
/// (`cmd:`) or write to a file (`device:` off /dev/tpm*) is refused before any
/// tpm2-tools run, for a listing as for a mount.
#[test]
fn a_header_tcti_never_runs_a_program() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("st");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let s = store.to_str().unwrap();
    ok(dv(&["init", s], &[]));
    let marker = dir.path().join("PWNED");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    for tcti in [
        format!("cmd:touch {}", marker.display()),
        format!("device:{}", victim.display()),
    ] {
        let mut h: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.join("diskvault.json")).unwrap()).unwrap();
        h["keyProtection"]["seal"] = "tpm2".into();
        h["keyProtection"]["tpm2"] =
            serde_json::json!({"tcti": tcti, "public": "AA==", "private": "AA=="});
        std::fs::write(
            store.join("diskvault.json"),
            serde_json::to_vec(&h).unwrap(),
        )
        .unwrap();
        let _ = dv(&["disk", "list", "--store", s], &[]);
        let e = err(dv(&["mount", "--no-create", s, mnt.to_str().unwrap()], &[]));
        assert!(e.contains("is not taken"), "{e}");
        assert!(!marker.exists(), "{tcti} ran a program");
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            b"keep me",
            "{tcti} wrote to a file"
        );
    }
}

/// A public key swapped into a sealed key file (no KEK needed for that) never
/// receives a DEK: a key wraps only once its private half has been unsealed and
/// matched to it.
#[test]
fn a_swapped_public_key_gets_no_dek() {
    let mut m = Mounted::new();
    let kid = cmk_setup(&m, &[("c1", "4M", "Premium_LRS")]);
    m.umount();
    let version = kid.rsplit('/').next().unwrap();
    let file = m.store.join(format!("vault/keys/k1/{version}.key"));
    let mut f: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let attacker = m.dir.path().join("attacker.pem");
    openssl_genrsa(&attacker);
    let spki = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&attacker)
        .output()
        .unwrap()
        .stdout;
    use base64::Engine;
    f["publicKey"] = base64::engine::general_purpose::STANDARD
        .encode(&spki)
        .into();
    std::fs::write(&file, serde_json::to_vec(&f).unwrap()).unwrap();
    m.mount();
    let o = dv(
        &[
            "disk",
            "create",
            "c2",
            "--size",
            "4M",
            "--disk-encryption-set",
            "set1",
            "--store",
            m.s(),
        ],
        &[],
    );
    let e = err(o);
    assert!(e.contains("does not open") || e.contains("unusable"), "{e}");
    // Nothing on the store is wrapped to the attacker's key.
    for p in walk(&m.store) {
        if p.file_name().is_some_and(|n| n == "meta.json") {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            for l in meta["layers"].as_array().into_iter().flatten() {
                let w = base64::engine::general_purpose::STANDARD
                    .decode(l["wrappedKey"].as_str().unwrap())
                    .unwrap();
                let bin = m.dir.path().join("w.bin");
                std::fs::write(&bin, &w).unwrap();
                let st = Command::new("openssl")
                    .args(["pkeyutl", "-decrypt", "-inkey"])
                    .arg(&attacker)
                    .arg("-in")
                    .arg(&bin)
                    .args([
                        "-pkeyopt",
                        "rsa_padding_mode:oaep",
                        "-pkeyopt",
                        "rsa_oaep_md:sha256",
                        "-pkeyopt",
                        "rsa_mgf1_md:sha256",
                    ])
                    .output()
                    .unwrap();
                assert!(
                    !st.status.success(),
                    "{} is wrapped to the attacker's key",
                    p.display()
                );
            }
        }
    }
}

/// `vault seal` on a full file system fails with one line and leaves a store that
/// mounts and reads; with room again it finishes. Some space is left free each time,
/// so the failure falls at different steps (the header, one key, another).
#[test]
fn seal_on_a_full_file_system() {
    let want = fixture_sums("store-v2");
    for spare_kib in [0usize, 4, 8, 12, 16] {
        let dir = tempfile::tempdir().unwrap();
        let fs = Tmpfs::new(&dir.path().join("fs"), "2M");
        let store = fs.0.join("st");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        copy_fixture("store-v2", &store);
        let s = store.to_str().unwrap();
        let spare = fs.0.join("spare");
        std::fs::write(&spare, vec![1u8; spare_kib * 1024]).unwrap();
        let filler = fs.fill();
        std::fs::remove_file(&spare).unwrap();
        let o = dv(&["vault", "seal", "--store", s], &[]);
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("No space left"), "{spare_kib} KiB: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        std::fs::remove_file(&filler).unwrap();
        mounts_and_reads(
            &store,
            &mnt,
            &want,
            &format!("after ENOSPC with {spare_kib} KiB free"),
        );
        let out = ok(dv(&["vault", "seal", "--store", s], &[]));
        assert!(out.contains("host"), "{out}");
        assert!(scan(None, &[&store], &[]).is_empty(), "{spare_kib} KiB");
        mounts_and_reads(
            &store,
            &mnt,
            &want,
            &format!("sealed after ENOSPC with {spare_kib} KiB free"),
        );
    }
}
