//! Test helper: a read-only FUSE filesystem with one file, `disk.img`, whose bytes are those
//! of a backing file, except that any read overlapping one byte range fails with EIO, as a
//! disk with a bad sector does. Files are opened with direct I/O, so every read(2) reaches
//! us as asked (no page cache, no readahead spilling into the bad range).
//!
//! Usage: `eio_fs BACKING MOUNTPOINT BAD_OFFSET BAD_LEN`; runs until unmounted
//! (`fusermount -u MOUNTPOINT`) or killed (auto-unmount).

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};

const ROOT: u64 = 1;
const DISK: u64 = 2;
const NAME: &str = "disk.img";
const TTL: Duration = Duration::from_secs(1);

struct EioFs {
    backing: File,
    size: u64,
    bad: std::ops::Range<u64>,
    /// Reads answered with EIO so far (printed on stderr).
    failed: u64,
}

impl EioFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o555, 0, 2)
        } else {
            (FileType::RegularFile, 0o444, self.size, 1)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for EioFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == NAME {
            reply.entry(&TTL, &self.attr(DISK), 0);
        } else {
            reply.error(ENOENT);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match ino {
            ROOT | DISK => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if ino == DISK {
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        } else {
            reply.error(ENOENT);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        if ino != DISK || offset < 0 {
            reply.error(ENOENT);
            return;
        }
        let start = offset as u64;
        let end = (start + size as u64).min(self.size);
        if start < self.bad.end && self.bad.start < end {
            self.failed += 1;
            eprintln!(
                "eio_fs: EIO for read {start}..{end} (failed reads: {})",
                self.failed
            );
            reply.error(EIO);
            return;
        }
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        match self.backing.read_exact_at(&mut buf, start) {
            Ok(()) => reply.data(&buf),
            Err(_) => reply.error(EIO),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            reply.error(ENOENT);
            return;
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// errno values (Linux).
const EIO: i32 = 5;
const ENOENT: i32 = 2;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: eio_fs BACKING MOUNTPOINT BAD_OFFSET BAD_LEN");
        std::process::exit(2);
    }
    let backing = File::open(&args[1]).expect("open backing file");
    let size = backing.metadata().expect("stat backing file").len();
    let bad_start: u64 = args[3].parse().expect("BAD_OFFSET");
    let bad_len: u64 = args[4].parse().expect("BAD_LEN");
    let mnt = PathBuf::from(&args[2]);
    let fs = EioFs {
        backing,
        size,
        bad: bad_start..bad_start + bad_len,
        failed: 0,
    };
    let opts = [
        MountOption::RO,
        MountOption::FSName("eio_fs".into()),
        MountOption::AutoUnmount,
        MountOption::AllowRoot,
    ];
    if let Err(e) = fuser::mount2(fs, &mnt, &opts) {
        eprintln!("eio_fs: mount on {}: {e}", mnt.display());
        std::process::exit(1);
    }
}
