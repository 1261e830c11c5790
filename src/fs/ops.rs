//! The FUSE operations: each maps a kernel request onto the store or the control
//! service and its outcome onto a reply. Those on open files (open, read, write,
//! flush, release, fsync, fallocate, lseek) hand over to `io.rs`.

use super::*;

impl Filesystem for DiskVaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ =
            config.add_capabilities(InitFlags::FUSE_ASYNC_DIO | InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn destroy(&mut self) {
        self.sizes.log();
        self.handles.write().clear();
        self.store.shutdown();
        let _ = std::fs::remove_file(self.store.root().join(crate::store::DAEMON_FILE));
        log::info!("unmounted; keys dropped");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(p) = self.node(parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        match self.child(&p, name) {
            Some((ino, node)) => {
                let (attr, ttl) = self.node_attr(ino, &node);
                reply.entry(&ttl, &attr, Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Some(node) => {
                let (attr, ttl) = self.node_attr(ino.0, &node);
                reply.attr(&ttl, &attr);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Node::DiskFile(d) = &node else {
            // Control files and directories have fixed attributes; writable control
            // files take the truncation to 0 that `echo >` sends.
            let writable = matches!(node, Node::Ctl(_, Kind::File { write: true, .. }));
            if size.is_some_and(|s| s != 0 || !writable)
                || mode.is_some()
                || uid.is_some()
                || gid.is_some()
            {
                return reply.error(Errno::EACCES);
            }
            let (a, t) = self.node_attr(ino.0, &node);
            return reply.attr(&t, &a);
        };
        // Snapshots and images never change, their times included.
        if d.kind.read_only() && (size.is_some() || mtime.is_some()) {
            let e = StoreError::ReadOnly {
                kind: d.kind,
                name: d.name(),
            };
            return reply.error(self.fail(&format!("change {} '{}'", d.kind, d.name()), e));
        }
        // Disk files stay 0600 and the mounting user's: a chmod or chown (as `cp -a`
        // and rsync send) is accepted and ignored, so copying images just works.
        if mode.is_some_and(|m| m & 0o7777 != 0o600)
            || uid.is_some_and(|u| u != self.uid)
            || gid.is_some_and(|g| g != self.gid)
        {
            log::debug!(
                "disk '{}': chmod/chown ignored (disk files are always 0600, owned by the mounting user)",
                d.name()
            );
        }
        if let Some(s) = size {
            if let Err(e) = self.store.resize(d, s) {
                return reply.error(self.fail(&format!("truncate '{}'", d.name()), e));
            }
        }
        if let Some(t) = mtime {
            d.set_mtime(match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            });
        }
        let (a, t) = self.node_attr(ino.0, &node);
        reply.attr(&t, &a);
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.create_disk(parent, name) {
            Ok(d) => {
                let ino = disk_ino(&d);
                let (a, t) = self.node_attr(ino, &Node::DiskFile(d));
                reply.entry(&t, &a, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.ctl_dir(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = self.control.mkdir(&split(&path), &Caller::user(req.uid())) {
            return reply.error(self.fail(&format!("mkdir .vault/{path}"), e));
        }
        let ino = self.ctl_ino(&path);
        let (a, t) = self.node_attr(ino, &Node::Ctl(path, Kind::Dir));
        reply.entry(&t, &a, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Some(kind) = self.node(parent.0).as_ref().and_then(nodes::dir_kind) {
            if kind.read_only() {
                let Ok(name) = self.name_str(name) else {
                    return reply.error(Errno::ENOENT);
                };
                return match self.store.delete_object(kind, name) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(self.fail(&format!("delete {kind} '{name}'"), e)),
                };
            }
        }
        if parent.0 != DISKS {
            return reply.error(match self.node(parent.0) {
                Some(p) if self.child(&p, name).is_some() => Errno::EPERM,
                _ => Errno::ENOENT,
            });
        }
        let Ok(name) = self.name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        match self.store.delete_disk(name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&format!("delete disk '{name}'"), e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.ctl_dir(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.control.rmdir(&split(&path), &Caller::user(req.uid())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&format!("rmdir .vault/{path}"), e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // Only disks rename, within disks/. EPERM, not EXDEV: on EXDEV `mv` would copy
        // and delete, which in .vault/ means a new key with fresh key material.
        if parent.0 != DISKS || newparent.0 != DISKS {
            let e = StoreError::NotPermitted(
                "only disks can be renamed, within disks/; keys, sets and control files can't"
                    .into(),
            );
            return reply.error(self.fail("rename", e));
        }
        let (Ok(from), Ok(to)) = (self.name_str(name), self.name_str(newname)) else {
            return reply.error(Errno::EINVAL);
        };
        if let Err(e) = control::check_reserved(to) {
            return reply.error(self.fail(&format!("rename disk '{from}' to '{to}'"), e));
        }
        if flags.bits() & libc::RENAME_EXCHANGE != 0 {
            return reply.error(Errno::EINVAL);
        }
        let replace = flags.bits() & libc::RENAME_NOREPLACE == 0;
        match self.store.rename_disk(from, to, replace) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&format!("rename disk '{from}' to '{to}'"), e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.do_open(req, ino, flags, reply);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let d = match self.create_disk(parent, name) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let ino = disk_ino(&d);
        match self.open_disk(d.clone(), flags) {
            Ok((fh, f)) => {
                let (a, t) = self.node_attr(ino, &Node::DiskFile(d));
                reply.created(&t, &a, Generation(0), fh, f);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.do_read(fh, offset, size, reply);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        self.do_write(fh, offset, data, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        self.do_flush(fh, reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh, reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.do_fsync(fh, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(children) = self.children(&node) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".to_string()),
            (self.parent_of(&node), FileType::Directory, "..".to_string()),
        ];
        entries.extend(children);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let mut st: libc::statvfs = unsafe {
            // Safe because: statvfs is plain old data; all-zero is a valid value.
            std::mem::zeroed()
        };
        let path = std::ffi::CString::new(self.store.root().as_os_str().as_encoded_bytes())
            .unwrap_or_default();
        // Safe because: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if rc != 0 {
            return reply.error(Errno::EIO);
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            255,
            st.f_frsize as u32,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.do_fallocate(fh, offset, length, mode, reply);
    }

    // Requests diskvault has no use for, answered without fuser's "[Not Implemented]"
    // warning: Python's open() sends TCGETS, ls asks for security.selinux.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        // ENOSYS: the kernel stops asking and treats files as always ready.
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // ENOSYS: the kernel stops asking (and reports "not supported" to callers).
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.do_lseek(fh, offset, whence, reply);
    }
}
