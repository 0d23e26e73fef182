//! A seeder's source that is not what the manifest says: changed after imaging (exit 9,
//! the piece named), or with a block that cannot be read (refused, the rest served, the
//! receivers exit 7 naming it, or finish from a healthy second seeder).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blockswarm_e2e::*;
use blockswarm_manifest::{exit, Manifest};
use sha1::{Digest, Sha1};

const T: Duration = Duration::from_secs(120);
const STALL: &str = "5s";
const STALL_T: Duration = Duration::from_secs(5);
/// Receivers look at the stall clock a few times a second, and may still trade pieces among
/// themselves after the seeder went (each traded piece restarts the clock).
const EXIT_SLACK: Duration = Duration::from_secs(15);

type Fixture = Ext4Fixture;

fn fixture(seed: u64, data_mib: u64) -> Fixture {
    ext4_fixture(seed, 64, data_mib)
}

fn piece_len(m: &Manifest, k: u32) -> u64 {
    let p = m.piece_length as u64;
    (m.total_length() - k as u64 * p).min(p)
}

/// Where piece `k` starts on the device, and a 4 KiB-aligned device offset inside the middle
/// of its longest extent segment (used data, found through the manifest's extent map).
fn inside_piece(m: &Manifest, k: u32) -> (u64, u64) {
    let segs: Vec<_> = m
        .map
        .segments(k as u64 * m.piece_length as u64, piece_len(m, k))
        .unwrap()
        .collect();
    let big = segs.iter().max_by_key(|s| s.length).unwrap();
    assert!(
        big.length >= 8192,
        "piece {k}: segments too short: {segs:?}"
    );
    let mid = (big.device_offset + big.length / 2) / 4096 * 4096;
    assert!(mid >= big.device_offset && mid + 4096 <= big.device_offset + big.length);
    (segs[0].device_offset, mid)
}

/// Which pieces of `target` match the manifest's hashes.
fn pieces_ok(target: &Path, m: &Manifest) -> Vec<bool> {
    let data = packed_data(target, m);
    let p = m.piece_length as usize;
    m.piece_hashes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let end = ((i + 1) * p).min(data.len());
            <[u8; 20]>::from(Sha1::digest(&data[i * p..end])) == *h
        })
        .collect()
}

fn wait_up(ip: &str) {
    wait_seeder_up(ip, T)
}

/// From a receiver's give-up line: how many pieces it says are missing.
fn missing_count(err: &str) -> usize {
    let tail = err
        .split("no peer sends any of the ")
        .nth(1)
        .unwrap_or_else(|| panic!("not a give-up line: {err}"));
    tail.split(' ').next().unwrap().parse().unwrap()
}

/// Flips 4 bytes of `img` at `offset`.
fn flip4(img: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, offset).unwrap();
    for x in &mut b {
        *x ^= 0xA5;
    }
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}

/// The source changed in 4 bytes of one piece after imaging: the seeder finds it the first
/// time it serves that piece, exits 9 with one line naming the piece, its packed range and
/// device offset; the receivers never write it and exit 7 within the stall deadline, and
/// every piece they do hold is correct.
#[test]
fn a_source_changed_after_imaging_stops_the_seeder_with_the_piece_named() {
    let f = fixture(120, 16);
    let net = 120;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let n = f.m.num_pieces();
    let k = n / 2;
    let (piece_dev, bad) = inside_piece(&f.m, k);
    flip4(&f.img, bad);

    // Targets first, so that both receivers start at once: the seeder stops at the first
    // request for piece k, which may come before a slow starter reached it.
    let targets: Vec<PathBuf> = (2..=3u8)
        .map(|h| {
            let t = f.d.join(format!("t{h}.img"));
            random_target(&t, f.m.map.device_size(), 120 + h as u64);
            t
        })
        .collect();
    let started = Instant::now();
    let mut seeder = seeder(&ip(1), &f.mpath, &["--upload-limit", "4M"], &f.d, "seeder");
    wait_up(&ip(1));
    let url = manifest_url(&ip(1), &f.m);
    let mut rs: Vec<(PathBuf, Proc)> = targets
        .into_iter()
        .zip(2..=3u8)
        .map(|(t, h)| {
            let args = ["--stall-timeout", STALL, "--retry-for", "5s"];
            let r = receiver(&ip(h), &url, &t, &args, &f.d, &format!("r{h}"));
            (t, r)
        })
        .collect();
    let code = seeder.wait(T);
    let stopped = Instant::now();
    let err = last_line(&seeder);
    eprintln!(
        "seeder exited {code} {:?} after start: {err}",
        started.elapsed()
    );
    assert_eq!(
        code,
        exit::SOURCE_CHANGED,
        "seeder:\n{}",
        seeder.stderr_text()
    );
    let p = f.m.piece_length as u64;
    let range = format!(
        "piece {k} (packed bytes {}..{}, device offset {piece_dev} of ",
        k as u64 * p,
        k as u64 * p + piece_len(&f.m, k)
    );
    assert!(
        err.starts_with("seeder: error: ") && err.contains(&range),
        "{err}\nwanted: {range}"
    );
    assert!(
        err.contains("source changed since imaging, or wrong --source"),
        "{err}"
    );
    let errors = seeder
        .stderr_text()
        .lines()
        .filter(|l| l.contains("does not match"))
        .count();
    assert_eq!(errors, 1, "one error line:\n{}", seeder.stderr_text());

    let mut gave_up = 0;
    for (t, r) in rs.iter_mut() {
        let code = r.wait(T);
        let took = stopped.elapsed();
        let err = last_line(r);
        eprintln!("{} exited {code} {took:?} after the seeder: {err}", r.name);
        if code == exit::UNREACHABLE && err.contains("cannot fetch manifest") {
            // It never reached the seeder before it stopped: nothing written, exit 6.
            assert!(pieces_ok(t, &f.m).iter().all(|&o| !o));
            continue;
        }
        gave_up += 1;
        assert_eq!(
            code,
            exit::VERIFY_FAILED,
            "{}:\n{}",
            r.name,
            r.stderr_text()
        );
        assert!(took < STALL_T + EXIT_SLACK, "{} took {took:?}", r.name);
        assert!(
            !r.stderr_text().contains("banning"),
            "the seeder sent no bad data, nobody is banned:\n{}",
            r.stderr_text()
        );
        // Every piece it counts as done verifies on the target; the changed one is not
        // there (its range still holds the target's old bytes).
        let ok = pieces_ok(t, &f.m);
        let have = ok.iter().filter(|&&o| o).count();
        eprintln!(
            "{}: {have} of {n} pieces on the target, all verified",
            r.name
        );
        assert_eq!(have, n as usize - missing_count(&err), "{err}");
        assert!(!ok[k as usize], "the changed piece was written");
        let h: u8 = r.name[1..].parse().unwrap();
        let before = f.d.join(format!("before{h}.img"));
        random_target(&before, f.m.map.device_size(), 120 + h as u64);
        let (a, b) = (packed_data(&before, &f.m), packed_data(t, &f.m));
        let piece = (k as u64 * p) as usize..(k as u64 * p + piece_len(&f.m, k)) as usize;
        assert!(
            a[piece.clone()] == b[piece],
            "{}: piece {k} was touched",
            r.name
        );
    }
    assert!(gave_up >= 1, "no receiver reached the seeder");
}

/// A `--source` of the right size that is another filesystem: exit 9 at the first piece.
#[test]
fn a_wrong_source_of_the_right_size_stops_the_seeder() {
    let f = fixture(121, 8);
    let (other, _) = make_ext4(&f.d, "other", 64, 4096, 8, 1210);
    let net = 121;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let src = other.to_str().unwrap();
    let mut seeder = seeder(&ip(1), &f.mpath, &["--source", src], &f.d, "seeder");
    wait_up(&ip(1));
    let url = manifest_url(&ip(1), &f.m);
    let mut rs = start_receivers(
        net,
        2..=2,
        &url,
        &f.m,
        &["--stall-timeout", STALL],
        &f.d,
        121,
    );
    let code = seeder.wait(T);
    let err = last_line(&seeder);
    eprintln!("seeder exited {code}: {err}");
    assert_eq!(code, exit::SOURCE_CHANGED, "{}", seeder.stderr_text());
    assert!(
        err.contains(
            "does not match the manifest's SHA-1: source changed since imaging, or wrong --source"
        ),
        "{err}"
    );
    let (t, r) = &mut rs[0];
    assert_eq!(r.wait(T), exit::VERIFY_FAILED, "{}", r.stderr_text());
    // Pieces before the first mismatch may be the same bytes in both filesystems (they
    // verify); every piece the receiver counts as done verifies on the target.
    let have = pieces_ok(t, &f.m).iter().filter(|&&o| o).count();
    let missing = missing_count(&last_line(r));
    eprintln!("receiver: {have} pieces on the target, {missing} missing");
    assert_eq!(have, f.m.num_pieces() as usize - missing);
}

/// A FUSE mount (`eio_fs`, a helper binary of this crate built on the `fuser` crate) whose
/// one file reads as the source image, except that read(2) of one 4 KiB block fails with
/// EIO: a real I/O error from the path given to the seeder, as a bad sector gives. (Device
/// mapper is not available here, and a loop device reads zeros past its backing file's
/// end rather than failing.) Unmounted when dropped.
struct EioMount {
    proc: Proc,
    mnt: PathBuf,
}

impl EioMount {
    fn new(backing: &Path, dir: &Path, bad: u64, len: u64) -> Option<EioMount> {
        if !Path::new("/dev/fuse").exists() {
            assert!(
                std::env::var_os("BLOCKSWARM_REQUIRE_FS_TOOLS").is_none(),
                "/dev/fuse missing"
            );
            eprintln!("skipping: no /dev/fuse");
            return None;
        }
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut proc = Proc::spawn(
            "eio_fs",
            Command::new(env!("CARGO_BIN_EXE_eio_fs"))
                .arg(backing)
                .arg(&mnt)
                .arg(bad.to_string())
                .arg(len.to_string()),
            dir,
        );
        let file = mnt.join("disk.img");
        let size = std::fs::metadata(backing).unwrap().len();
        let up = wait_until(Duration::from_secs(20), || {
            std::fs::metadata(&file).is_ok_and(|m| m.len() == size)
        });
        if !up {
            let code = proc
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!("eio_fs did not mount ({code:?}):\n{}", proc.stderr_text());
        }
        Some(EioMount { proc, mnt })
    }

    fn file(&self) -> PathBuf {
        self.mnt.join("disk.img")
    }
}

impl Drop for EioMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .status();
        self.proc.kill();
    }
}

/// Starts a seeder over an `eio_fs` mount of `f.img` where one block of piece `k` fails.
fn eio_seeder(f: &Fixture, ip: &str, k: u32, extra: &[&str]) -> Option<(EioMount, Proc)> {
    let (_, bad) = inside_piece(&f.m, k);
    let mount = EioMount::new(&f.img, &f.d, bad, 4096)?;
    // The EIO is real: read(2) of that block through the mount fails.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(mount.file()).unwrap();
        let mut b = vec![0u8; 4096];
        let e = file.read_exact_at(&mut b, bad).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5), "{e}");
        file.read_exact_at(&mut b, bad - 4096).unwrap();
    }
    let src = mount.file();
    let mut args = vec!["--source", src.to_str().unwrap()];
    args.extend_from_slice(extra);
    let s = seeder(ip, &f.mpath, &args, &f.d, "seeder");
    wait_up(ip);
    Some((mount, s))
}

fn unreadable(ip: &str) -> Option<Vec<u64>> {
    status_of(ip).and_then(|s| {
        s["unreadable_pieces"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
    })
}

/// One unreadable block on the source: the seeder keeps running and serving every other
/// piece, lists the piece in `/status`, logs it once; the receivers get everything else and
/// exit 7 naming exactly that piece, within the stall deadline.
#[test]
fn an_unreadable_source_block_is_refused_and_the_rest_is_served() {
    let f = fixture(122, 16);
    let net = 122;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let n = f.m.num_pieces();
    let k = n / 3;
    let Some((_mount, mut seeder)) = eio_seeder(&f, &ip(1), k, &[]) else {
        return;
    };
    let url = manifest_url(&ip(1), &f.m);
    let started = Instant::now();
    let mut rs = start_receivers(
        net,
        2..=3,
        &url,
        &f.m,
        &["--stall-timeout", STALL],
        &f.d,
        122,
    );
    assert!(
        wait_until(T, || unreadable(&ip(1)) == Some(vec![k as u64])),
        "seeder never listed piece {k} as unreadable: {:?}\n{}",
        status_of(&ip(1)),
        seeder.stderr_text()
    );
    for (t, r) in rs.iter_mut() {
        let code = r.wait(T);
        let err = last_line(r);
        eprintln!(
            "{} exited {code} {:?} after start: {err}",
            r.name,
            started.elapsed()
        );
        assert_eq!(
            code,
            exit::VERIFY_FAILED,
            "{}:\n{}",
            r.name,
            r.stderr_text()
        );
        assert!(
            err.contains(&format!("any of the 1 missing pieces of {n} ({k})")),
            "{err}"
        );
        let ok = pieces_ok(t, &f.m);
        assert!(
            ok.iter().enumerate().all(|(i, &o)| o == (i != k as usize)),
            "{}: every piece but {k} on the target",
            r.name
        );
        // Bounded: 16 MiB on loopback take a few seconds, then the stall deadline.
        assert!(started.elapsed() < Duration::from_secs(30) + STALL_T + EXIT_SLACK);
    }
    // Still up and serving; the failure was logged once.
    assert!(
        seeder.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "seeder exited:\n{}",
        seeder.stderr_text()
    );
    let st = status_of(&ip(1)).expect("seeder answers");
    assert_eq!(st["unreadable_pieces"], serde_json::json!([k]));
    eprintln!(
        "seeder: uploaded {} bytes, {} pieces verified",
        st["uploaded"], st["pieces_verified"]
    );
    let log = seeder.stderr_text();
    let warned: Vec<_> = log
        .lines()
        .filter(|l| l.contains("is unreadable"))
        .collect();
    assert_eq!(warned.len(), 1, "logged once:\n{log}");
    assert!(
        warned[0].contains(&format!("piece {k} ")) && warned[0].contains("Input/output error"),
        "{}",
        warned[0]
    );
    seeder.kill();
}

/// The same unreadable block, and then a healthy second seeder joins (it announces to the
/// first one's tracker): every receiver finishes with a correct copy.
#[test]
fn an_unreadable_piece_comes_from_a_healthy_second_seeder() {
    let f = fixture(123, 16);
    let net = 123;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let n = f.m.num_pieces();
    let k = n / 3;
    let Some((_mount, mut first)) = eio_seeder(&f, &ip(1), k, &["--expect", "2"]) else {
        return;
    };
    let url = manifest_url(&ip(1), &f.m);
    let mut rs = start_receivers(
        net,
        2..=3,
        &url,
        &f.m,
        &["--stall-timeout", "60s"],
        &f.d,
        123,
    );
    assert!(
        wait_until(T, || unreadable(&ip(1)) == Some(vec![k as u64])),
        "seeder never listed piece {k} as unreadable\n{}",
        first.stderr_text()
    );
    let tracker = announce_url(&ip(1));
    let added = Instant::now();
    let mut second = seeder(
        &ip(9),
        &f.mpath,
        &["--source", f.img.to_str().unwrap(), "--tracker", &tracker],
        &f.d,
        "seeder-2",
    );
    wait_all_ok(&mut rs, T);
    eprintln!(
        "receivers finished {:?} after the second seeder started",
        added.elapsed()
    );
    for (t, _) in &rs {
        assert_same_ext4(&f.img, t, &f.m, &f.files);
    }
    let st = status_of(&ip(9)).expect("second seeder answers");
    assert!(st["uploaded"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["unreadable_pieces"], serde_json::json!([]));
    // The first seeder saw both receivers complete (through its tracker and their
    // HAVEs) and ends as usual, the piece it could not read still listed.
    assert_eq!(first.wait(T), 0, "{}", first.stderr_text());
    let end = seeder_status(&first);
    assert_eq!(end["unreadable_pieces"], serde_json::json!([k]), "{end}");
    second.kill();
}

/// CPU seconds (user + system) a running process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses): utime is the 14th field.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Bench (ignored; `cargo test -p blockswarm-e2e --test integrity -- --ignored bench`):
/// what first-serve hashing costs a seeder. 3 receivers fetch a ~64 MiB ext4 image, with
/// the check and with the hidden `--unsafe-no-serve-check`, alternating; prints wall time
/// from receiver start to the last receiver's exit and the seeder's CPU seconds.
#[test]
#[ignore]
fn bench_first_serve_hashing_cost() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (img, _) = make_ext4(&d, "src", 160, 4096, 96, 124);
    let mpath = image(&img, &d.join("m.torrent"), &[]);
    let m = read_manifest(&mpath);
    eprintln!(
        "image: {} packed bytes, {} pieces of {}",
        m.total_length(),
        m.num_pieces(),
        m.piece_length
    );
    let net = 124;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for run in 0..runs * 2 {
        let check = run % 2 == 0;
        let mut args = vec!["--expect", "3", "--announce-interval", "1"];
        if !check {
            args.push("--unsafe-no-serve-check");
        }
        let logs = d.join(format!("run{run}"));
        std::fs::create_dir_all(&logs).unwrap();
        let mut s = seeder(&ip(1), &mpath, &args, &logs, "seeder");
        wait_up(&ip(1));
        let pid = s.child.as_ref().unwrap().id();
        let cpu0 = cpu_seconds(pid).unwrap();
        let started = Instant::now();
        let url = manifest_url(&ip(1), &m);
        let mut rs = start_receivers(net, 2..=4, &url, &m, &[], &logs, 124);
        let mut cpu = cpu0;
        let code = loop {
            if let Some(c) = cpu_seconds(pid) {
                cpu = c;
            }
            if rs.iter_mut().all(|(_, r)| {
                r.child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().unwrap().is_some())
            }) {
                break 0;
            }
            assert!(started.elapsed() < T, "run {run} took too long");
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        let _ = code;
        wait_all_ok(&mut rs, T);
        let st = status_of(&ip(1)).unwrap();
        eprintln!(
            "run {run}: check {check}: 3 receivers done in {:.2} s; seeder CPU {:.2} s; \
             uploaded {:.2} copies; pieces verified {}",
            took.as_secs_f64(),
            cpu - cpu0,
            st["uploaded_copies"].as_f64().unwrap(),
            st["pieces_verified"]
        );
        s.kill();
        for (t, _) in &rs {
            let _ = std::fs::remove_file(t);
        }
    }
}
