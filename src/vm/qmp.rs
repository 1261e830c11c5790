//! A minimal QMP client: one connection per operation (a QEMU chardev serves one
//! client at a time), every read and write bounded by a timeout so that a hung QEMU
//! can't hang the daemon.

use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    sock: UnixStream,
    /// Bytes read past the last complete message.
    pending: Vec<u8>,
    /// When the current operation (connect, one command) must be done by.
    deadline: Instant,
    /// Events seen while waiting for replies, for `wait_event` (the latest few).
    events: Vec<Value>,
    /// How long one command may take in all, however much the other end sends.
    timeout: Duration,
}

/// The longest message taken from QEMU; its replies here are a few KiB.
const MAX_LINE: u64 = 1 << 20;
/// Events kept for `wait_event`.
const MAX_EVENTS: usize = 64;

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("QMP {what}: {e}")
}

impl Qmp {
    /// Connects and leaves capabilities negotiation done.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let s = UnixStream::connect(path).map_err(|e| err("connect", e))?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| err("setup", e))?;
        let mut q = Qmp {
            sock: s,
            pending: Vec::new(),
            deadline: Instant::now() + timeout,
            events: Vec::new(),
            timeout,
        };
        let greeting = q.read_msg()?;
        if greeting.get("QMP").is_none() {
            return Err(err("greeting", "not a QMP server"));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// The pid of the QEMU on the other end (SO_PEERCRED).
    pub fn peer_pid(&self) -> Option<u32> {
        use std::os::fd::AsRawFd;
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // Safe because: the fd is an open socket owned by `self.sock`, and `cred`
        // and `len` are valid out-pointers of the size passed.
        let r = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
    }

    /// The next message, by the current deadline: however the other end sends (a
    /// byte at a time included), the wait never outlasts it.
    fn read_msg(&mut self) -> Result<Value, String> {
        use std::io::Read;
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return serde_json::from_slice(&line).map_err(|e| err("reply", e));
            }
            if self.pending.len() as u64 >= MAX_LINE {
                return Err(err("read", "a message without end (not a QMP server?)"));
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err(
                    "read",
                    format!("no complete reply within {:?}", self.timeout),
                ));
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(|e| err("setup", e))?;
            let mut buf = [0u8; 64 << 10];
            let n = match self.sock.read(&mut buf) {
                Ok(0) => return Err(err("read", "QEMU closed the connection")),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err("read", e)),
            };
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    fn keep_event(&mut self, v: Value) {
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(v);
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let mut msg = json!({ "execute": cmd });
        if args.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("serializes");
        bytes.push(b'\n');
        self.deadline = Instant::now() + self.timeout;
        self.sock
            .write_all(&bytes)
            .map_err(|e| err(&format!("send {cmd}"), e))?;
        loop {
            let v = self
                .read_msg()
                .map_err(|e| format!("QEMU sent no reply to {cmd}: {e}"))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("error");
                return Err(format!("QEMU refused {cmd}: {desc}"));
            }
            if v.get("event").is_some() {
                self.keep_event(v);
            }
        }
    }

    /// Waits for an event whose name is `name` and whose data matches `pred`.
    pub fn wait_event(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        deadline: Instant,
    ) -> Result<Value, String> {
        let matches = |v: &Value| {
            v.get("event").and_then(Value::as_str) == Some(name)
                && pred(v.get("data").unwrap_or(&Value::Null))
        };
        if let Some(i) = self.events.iter().position(matches) {
            return Ok(self.events.remove(i));
        }
        self.deadline = deadline;
        loop {
            let v = self
                .read_msg()
                .map_err(|e| format!("QEMU sent no {name} event: {e}"))?;
            if matches(&v) {
                return Ok(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    /// A fake QMP server that runs `serve` on its one connection.
    fn server(serve: fn(UnixStream)) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("q.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                serve(s);
            }
        });
        (d, path)
    }

    fn bounded(path: &Path) -> (Result<Qmp, String>, Duration) {
        let t = Instant::now();
        let r = Qmp::connect(path, Duration::from_millis(300));
        (r, t.elapsed())
    }

    /// Whatever the other end does, a call ends with an error within its timeout
    /// (plus one read), and memory stays bounded.
    #[test]
    fn a_hostile_peer_gets_an_error_in_time() {
        let silent: fn(UnixStream) = |s| {
            std::thread::sleep(Duration::from_secs(3));
            drop(s);
        };
        let endless_line: fn(UnixStream) = |mut s| {
            let junk = vec![b'x'; 64 << 10];
            while s.write_all(&junk).is_ok() {}
        };
        let not_qmp: fn(UnixStream) = |mut s| {
            let _ = s.write_all(b"{\"hello\": 1}\n");
            std::thread::sleep(Duration::from_secs(3));
        };
        let event_flood: fn(UnixStream) = |mut s| {
            let _ = s.write_all(b"{\"QMP\": {}}\n");
            let ev = b"{\"event\": \"X\", \"data\": {}}\n".repeat(100);
            while s.write_all(&ev).is_ok() {}
        };
        let drip: fn(UnixStream) = |mut s| {
            let _ = s.write_all(b"{\"QMP\": {}}\n");
            while s.write_all(b" ").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        for (what, f) in [
            ("drip", drip),
            ("silent", silent),
            ("endless line", endless_line),
            ("not QMP", not_qmp),
            ("event flood", event_flood),
        ] {
            let (_d, path) = server(f);
            let (r, took) = bounded(&path);
            assert!(r.is_err(), "{what}: connected");
            assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
        }
    }

    #[test]
    fn a_qmp_peer_is_spoken_to() {
        let (_d, path) = server(|s| {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                let reply = match v["execute"].as_str() {
                    Some("query-status") => {
                        "{\"event\": \"E\"}\n{\"return\": {\"status\": \"running\"}}\n"
                    }
                    Some("bad") => "{\"error\": {\"desc\": \"no such command\"}}\n",
                    _ => "{\"return\": {}}\n",
                };
                w.write_all(reply.as_bytes()).unwrap();
                line.clear();
            }
        });
        let mut q = Qmp::connect(&path, Duration::from_secs(2)).unwrap();
        let st = q.execute("query-status", serde_json::json!({})).unwrap();
        assert_eq!(st["status"], "running");
        let e = q.execute("bad", serde_json::json!({})).unwrap_err();
        assert!(e.contains("no such command"), "{e}");
        // The event that came before the reply is kept for wait_event.
        q.wait_event("E", |_| true, Instant::now()).unwrap();
        assert_eq!(q.peer_pid(), Some(std::process::id()));
    }
}
