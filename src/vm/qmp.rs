//! A minimal QMP client: one connection per operation (a QEMU chardev serves one
//! client at a time), every read and write bounded by a timeout so that a hung QEMU
//! can't hang the daemon.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events seen while waiting for replies, for `wait_event`.
    events: Vec<Value>,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("QMP {what}: {e}")
}

impl Qmp {
    /// Connects and leaves capabilities negotiation done.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let s = UnixStream::connect(path).map_err(|e| err("connect", e))?;
        s.set_read_timeout(Some(timeout))
            .and_then(|_| s.set_write_timeout(Some(timeout)))
            .map_err(|e| err("setup", e))?;
        let writer = s.try_clone().map_err(|e| err("setup", e))?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
            events: Vec::new(),
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
        // Safe because: the fd is an open socket owned by `self.writer`, and `cred`
        // and `len` are valid out-pointers of the size passed.
        let r = unsafe {
            libc::getsockopt(
                self.writer.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
    }

    fn read_msg(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| err("read", e))?;
        if n == 0 {
            return Err(err("read", "QEMU closed the connection"));
        }
        serde_json::from_str(&line).map_err(|e| err("reply", e))
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let mut msg = json!({ "execute": cmd });
        if args.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("serializes");
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|e| err(&format!("send {cmd}"), e))?;
        loop {
            let v = self.read_msg()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("error");
                return Err(format!("QEMU refused {cmd}: {desc}"));
            }
            if v.get("event").is_some() {
                self.events.push(v);
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
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("QEMU sent no {name} event in time"));
            }
            let _ = self
                .writer
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            let v = self.read_msg()?;
            if matches(&v) {
                return Ok(v);
            }
        }
    }
}
