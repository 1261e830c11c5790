//! Keys held in a PKCS#11 token (SoftHSM2): made there sensitive and never
//! extractable, disks on them work, revocation and restore, rotation, import, purge
//! (checked with pkcs11-tool), and a token that can't be reached fails closed and
//! comes back without a remount.

mod common;
use common::custody::{dv, ok};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4711";

/// A SoftHSM2 token in its own directory (SOFTHSM2_CONF), nothing shared with the host.
struct Token {
    conf: PathBuf,
    pin_file: PathBuf,
    label: String,
}

impl Token {
    fn new(dir: &Path, label: &str) -> Token {
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM2 is needed: apt-get install softhsm2 opensc"
        );
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}\n", tokens.display()),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                PIN,
                "--so-pin",
                "123456",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        Token {
            conf,
            pin_file,
            label: label.into(),
        }
    }

    /// `diskvault init STORE` with the vault on this token, and `extra` arguments.
    fn init(&self, store: &str, extra: &[&str]) {
        let pin = self.pin_file.to_str().unwrap();
        let mut args = vec![
            "init",
            store,
            "--hsm-module",
            MODULE,
            "--hsm-token",
            &self.label,
        ];
        args.extend(["--hsm-pin-file", pin]);
        args.extend(extra);
        ok(dv(&args, &self.env()));
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.to_str().unwrap())]
    }

    /// pkcs11-tool --list-objects, logged in.
    fn objects(&self) -> String {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--module",
                MODULE,
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                PIN,
            ])
            .arg("--list-objects")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// A mounted store whose vault uses the token, with purge protection, an HSM key
/// `h1`, set `hs` on it and disk `hd` in that set, and platform disk `pd`.
struct HsmStore {
    t: Token,
    m: Mounted,
}

impl HsmStore {
    fn new() -> HsmStore {
        let dir = tempfile::tempdir().unwrap();
        let t = Token::new(&dir.path().join("hsm"), "dvtest");
        let store = dir.path().join("store");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let (s, env) = (store.to_str().unwrap().to_string(), t.env());
        t.init(&s, &[]);
        ok(dv(&["mount", &s, mnt.to_str().unwrap()], &env));
        let mut m = Mounted::adopt(&store, &mnt);
        m.dir = dir;
        let h = HsmStore { t, m };
        h.run(&["vault", "set", "--purge-protection", "true"]);
        let key = json(&h.run(&["key", "create", "h1", "--protection", "hsm"]));
        assert_eq!(key["key"]["kty"], "RSA-HSM", "{key}");
        let kid = key["key"]["kid"].as_str().unwrap().to_string();
        h.run(&["des", "create", "hs", "--key-url", &kid]);
        h.run(&["key", "grant", "h1", "--des", "hs"]);
        h.run(&[
            "disk",
            "create",
            "hd",
            "--size",
            "4M",
            "--disk-encryption-set",
            "hs",
        ]);
        h.run(&["disk", "create", "pd", "--size", "4M"]);
        h
    }

    fn run(&self, args: &[&str]) -> String {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--store", self.m.s()]);
        ok(dv(&a, &self.t.env()))
    }
}

fn read4k(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = std::fs::read(p)?;
    v.truncate(4096);
    Ok(v)
}

/// The key is made in the token as the template says; a disk on it works; it is
/// EIO once `key set --enabled false` has returned, and back after enabling; a
/// rotation's version is in the token too; the unwrap path is reported.
#[test]
fn hsm_key_end_to_end() {
    let h = HsmStore::new();
    let objs = h.t.objects();
    assert!(objs.contains("Private Key Object; RSA"), "{objs}");
    assert!(
        objs.contains("sensitive, always sensitive, never extractable"),
        "the private key must be sensitive and non-extractable: {objs}"
    );
    assert!(objs.contains("Usage:      decrypt, unwrap"), "{objs}");
    assert!(!objs.contains("sign"), "no signing: {objs}");
    std::fs::write(h.m.disk("hd"), pattern(11, 4096)).unwrap();
    std::fs::write(h.m.disk("pd"), pattern(12, 4096)).unwrap();
    assert_eq!(read4k(&h.m.disk("hd")).unwrap(), pattern(11, 4096));
    let v = json(&h.run(&["vault", "show"]));
    let hsm = &v["properties"]["hsm"];
    assert_eq!(hsm["state"], "Available", "{v}");
    // SoftHSM2 2.6 has OAEP only with SHA-1: the raw path, in the token.
    assert!(
        hsm["unwrapMechanism"]
            .as_str()
            .unwrap()
            .contains("CKM_RSA_X_509"),
        "{v}"
    );

    h.run(&["key", "set", "h1", "--enabled", "false"]);
    let e = std::fs::File::open(h.m.disk("hd")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(
        read4k(&h.m.disk("pd")).unwrap(),
        pattern(12, 4096),
        "platform disks go on"
    );
    h.run(&["key", "set", "h1", "--enabled", "true"]);
    assert_eq!(read4k(&h.m.disk("hd")).unwrap(), pattern(11, 4096));

    let r = json(&h.run(&["key", "rotate", "h1"]));
    assert_eq!(r["key"]["kty"], "RSA-HSM");
    let v2 = r["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        h.t.objects().contains(&v2),
        "the new version is in the token"
    );
    // No private key of h1 anywhere in the store: only public halves.
    for p in walk(&h.m.store) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with(&v2) {
            assert_eq!(name, format!("{v2}.pub"), "{}", p.display());
        }
    }
}

/// BYOK into the token, then purge: the token's objects are destroyed (crypto-shred).
#[test]
fn import_into_the_token_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let t = Token::new(&dir.path().join("hsm"), "dvpurge");
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let env = t.env();
    t.init(s, &[]);
    let pem = dir.path().join("byok.pem");
    openssl_genrsa(&pem);
    let o = dv(
        &[
            "key",
            "import",
            "b1",
            "--pem",
            pem.to_str().unwrap(),
            "--protection",
            "hsm",
            "--store",
            s,
        ],
        &env,
    );
    let k = json(&ok(o.clone()));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("destroy"),
        "reminds to destroy the PEM"
    );
    assert_eq!(k["key"]["kty"], "RSA-HSM");
    // The token's key is the imported one: same modulus.
    let modulus = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let hexmod = String::from_utf8_lossy(&modulus.stdout)
        .trim()
        .trim_start_matches("Modulus=")
        .to_lowercase();
    use base64::Engine;
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(k["key"]["n"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        n.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        hexmod
    );
    let objs = t.objects();
    assert!(
        objs.contains("never extractable") || objs.contains("sensitive"),
        "{objs}"
    );
    ok(dv(
        &["key", "create", "h2", "--protection", "hsm", "--store", s],
        &env,
    ));
    let ver = |name: &str| {
        json(&ok(dv(&["key", "show", name, "--store", s], &env)))["key"]["kid"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    };
    let (vb, vh) = (ver("b1"), ver("h2"));
    assert!(t.objects().contains(&vh) && t.objects().contains(&vb));
    ok(dv(&["key", "delete", "h2", "--store", s], &env));
    assert!(t.objects().contains(&vh), "soft delete keeps the token key");
    ok(dv(&["key", "purge", "h2", "--store", s], &env));
    let objs = t.objects();
    assert!(
        !objs.contains(&vh),
        "purge destroys the token objects: {objs}"
    );
    assert!(objs.contains(&vb), "other keys stay: {objs}");
}

/// A wrong PIN, or a module that is gone, makes the disks on token keys Unavailable
/// with the reason (never the mount, never platform disks); fixing it brings them
/// back without a remount.
#[test]
fn token_outage_fails_closed_and_recovers() {
    let mut h = HsmStore::new();
    std::fs::write(h.m.disk("hd"), pattern(13, 4096)).unwrap();
    std::fs::write(h.m.disk("pd"), pattern(14, 4096)).unwrap();
    h.m.umount();

    let bad = h.m.dir.path().join("badpin");
    std::fs::write(&bad, "0000\n").unwrap();
    let env = [
        h.t.env()[0],
        ("DISKVAULT_HSM_PIN_FILE", bad.to_str().unwrap()),
    ];
    h.m.mount_with(&[], &env);
    let e = std::fs::File::open(h.m.disk("hd")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert_eq!(read4k(&h.m.disk("pd")).unwrap(), pattern(14, 4096));
    let list = h.run(&["disk", "list", "-o", "json"]);
    let hd = json(&list)
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "hd")
        .cloned()
        .unwrap();
    let state = hd.to_string();
    assert!(
        state.contains("Unavailable") && state.contains("wrong PIN") && state.contains("badpin"),
        "{state}"
    );
    // The daemon read the PIN file named in its environment: fixing that file is
    // picked up by the reconciler.
    std::fs::write(&bad, format!("{PIN}\n")).unwrap();
    Mounted::wait_for(Duration::from_secs(20), || {
        read4k(&h.m.disk("hd")).ok() == Some(pattern(13, 4096))
    })
    .expect("the disk comes back once the PIN is right");
    h.m.umount();

    // A module that is gone: the vault names a link to it, removed for the mount.
    let link = h.m.dir.path().join("module.so");
    std::os::unix::fs::symlink(MODULE, &link).unwrap();
    let s = h.m.s().to_string();
    let pin = h.t.pin_file.to_str().unwrap().to_string();
    ok(dv(
        &[
            "vault",
            "set",
            "--hsm-module",
            link.to_str().unwrap(),
            "--hsm-token",
            &h.t.label,
            "--hsm-pin-file",
            &pin,
            "--store",
            &s,
        ],
        &h.t.env(),
    ));
    std::fs::remove_file(&link).unwrap();
    h.m.mount_with(&[], &h.t.env());
    assert!(std::fs::File::open(h.m.disk("hd")).is_err());
    assert_eq!(read4k(&h.m.disk("pd")).unwrap(), pattern(14, 4096));
    std::os::unix::fs::symlink(MODULE, &link).unwrap();
    Mounted::wait_for(Duration::from_secs(20), || {
        read4k(&h.m.disk("hd")).ok() == Some(pattern(13, 4096))
    })
    .expect("the disk comes back once the module is there");
}

/// `init --platform-key hsm`: the platform key is generated in the token, the store
/// holds only its public half, platform disks work through it, and without the token
/// they fail closed while the mount stays up.
#[test]
fn platform_key_in_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let t = Token::new(&dir.path().join("hsm"), "dvplat");
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (s, env) = (store.to_str().unwrap(), t.env());
    let o = dv(&["init", s, "--platform-key", "hsm"], &env);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--hsm-module"));
    assert!(!store.exists(), "a refused init leaves nothing");
    t.init(s, &["--platform-key", "hsm"]);
    assert!(store.join("keys/platform.pub").exists());
    assert!(!store.join("keys/platform.key").exists() && !store.join("keys/platform.pem").exists());
    assert!(
        t.objects().contains("diskvault:platform/"),
        "{}",
        t.objects()
    );
    ok(dv(&["mount", s, mnt.to_str().unwrap()], &env));
    let mut m = Mounted::adopt(&store, &mnt);
    run_ok(&["disk", "create", "p1", "--size", "4M", "--store", s]);
    std::fs::write(m.disk("p1"), pattern(21, 4096)).unwrap();
    m.umount();
    m.mount_with(&[], &env);
    assert_eq!(read4k(&m.disk("p1")).unwrap(), pattern(21, 4096));
    m.umount();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "0000").unwrap();
    m.mount_with(
        &[],
        &[env[0], ("DISKVAULT_HSM_PIN_FILE", bad.to_str().unwrap())],
    );
    let e = std::fs::File::open(m.disk("p1")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
}
