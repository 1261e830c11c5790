//! The bodies of the FUSE operations on open files, from open to release.

use super::*;

impl DiskVaultFs {
    pub(super) fn do_open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        let (reading, writing) = (acc != libc::O_WRONLY, acc != libc::O_RDONLY);
        match self.node(ino.0) {
            Some(Node::DiskFile(d)) if writing && d.kind.read_only() => {
                let e = StoreError::ReadOnly {
                    kind: d.kind,
                    name: d.name(),
                };
                reply.error(self.fail(&format!("open {} '{}' for writing", d.kind, d.name()), e))
            }
            Some(Node::DiskFile(d)) => match self.open_disk(d, flags.0) {
                Ok((fh, f)) => reply.opened(fh, f),
                Err(e) => reply.error(e),
            },
            Some(Node::Ctl(path, Kind::File { read, write })) => {
                // Root bypasses mode bits, so the file's own rules are checked here.
                // A writable file may be opened for reading too: to read the reply.
                if (reading && !read && !write) || (writing && !write) {
                    return reply.error(Errno::EACCES);
                }
                let content = if reading && read {
                    match self.control.read(&split(&path), &Caller::user(req.uid())) {
                        Ok(c) => c,
                        Err(e) => return reply.error(self.fail(&format!("read .vault/{path}"), e)),
                    }
                } else {
                    Vec::new()
                };
                let fh = self.add_handle(Handle::Control {
                    path,
                    content,
                    reply: Default::default(),
                    pending: Default::default(),
                    ran: Default::default(),
                    opener: req.uid(),
                });
                reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    pub(super) fn do_read(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => {
                // Counted until replied, so revocation can drop cached pages after it.
                let _inflight = d.inflight();
                self.sizes.read(size as usize);
                // Replied from the store's buffer while its data is there.
                let mut reply = Some(reply);
                let r = d.read_with(offset, size as usize, |data| {
                    reply.take().expect("one reply").data(data)
                });
                if let (Err(e), Some(reply)) = (r, reply) {
                    reply.error(self.fail_io(fh, &format!("read '{}'", d.name()), e));
                }
            }
            Some(Handle::Control {
                content,
                reply: last,
                ..
            }) => {
                let last = last.lock();
                let content = last.as_deref().unwrap_or(content);
                let start = (offset as usize).min(content.len());
                let end = (start + size as usize).min(content.len());
                reply.data(&content[start..end]);
            }
            None => reply.error(Errno::EBADF),
        }
    }

    pub(super) fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8], reply: ReplyWrite) {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => {
                let _inflight = d.inflight();
                self.sizes.write(data.len());
                match d.write(offset, data) {
                    Ok(n) => reply.written(n as u32),
                    Err(e) => reply.error(self.fail_io(fh, &format!("write '{}'", d.name()), e)),
                }
            }
            // Each write(2) to a control file is one complete command, as in sysfs.
            Some(Handle::Control {
                path,
                reply: last,
                pending,
                ran,
                opener,
                ..
            }) => {
                match self.write_control(&Caller::user(*opener), path, data, last, pending, ran) {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => reply.error(e),
                }
            }
            None => reply.error(Errno::EBADF),
        }
    }

    pub(super) fn do_flush(&self, fh: FileHandle, reply: ReplyEmpty) {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => match d.persist_size() {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail_io(fh, &format!("flush '{}'", d.name()), e)),
            },
            _ => reply.ok(),
        }
    }

    pub(super) fn do_release(&self, fh: FileHandle, reply: ReplyEmpty) {
        let h = self.handles.write().remove(&fh.0);
        match h.as_deref() {
            Some(Handle::Disk(d)) => {
                self.io_failures_closed(fh, &d.name());
                if let Err(e) = self.store.release(d) {
                    return reply.error(self.fail(&format!("close '{}'", d.name()), e));
                }
            }
            // An import left incomplete is carried out at the last close; its error
            // can only go to last-error and the log.
            Some(Handle::Control {
                path,
                reply: last,
                pending,
                opener,
                ..
            }) => {
                let rest = zeroize::Zeroizing::new(std::mem::take(&mut *pending.lock()));
                if !rest.is_empty() {
                    let _ = self.run_write(path, &rest, &Caller::user(*opener), last);
                }
            }
            None => {}
        }
        reply.ok();
    }

    pub(super) fn do_fsync(&self, fh: FileHandle, reply: ReplyEmpty) {
        match self.disk_handle(fh) {
            Ok(d) => match d.sync() {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail_io(fh, &format!("fsync '{}'", d.name()), e)),
            },
            Err(_) => reply.ok(),
        }
    }

    pub(super) fn do_fallocate(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let d = match self.disk_handle(fh) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let r = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => d.allocate(offset, length, keep),
            libc::FALLOC_FL_PUNCH_HOLE if keep => d.punch(offset, length),
            libc::FALLOC_FL_ZERO_RANGE => d.zero_range(offset, length, keep),
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail_io(fh, &format!("fallocate '{}'", d.name()), e)),
        }
    }

    pub(super) fn do_lseek(&self, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let d = match self.disk_handle(fh) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let kind = match whence {
            libc::SEEK_DATA => SeekKind::Data,
            libc::SEEK_HOLE => SeekKind::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        if offset < 0 {
            return reply.error(Errno::ENXIO);
        }
        match d.seek(offset as u64, kind) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
