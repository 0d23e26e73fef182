//! Helpers for blockswarm's end-to-end tests: locating the built binaries, making real ext4
//! images, running processes that are killed when dropped, comparing targets with sources.
#![forbid(unsafe_code)]

pub mod boot;
pub mod disk;
pub mod evil_peer;
pub mod room;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use blockswarm_manifest::Manifest;
use rand::{Rng, RngCore, SeedableRng};
use sha1::{Digest, Sha1};

/// Path of a workspace binary (`imager`, `seeder`, `receiver`) built next to this test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first (the README's test command does)",
        p.display()
    );
    p
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes `len` pseudo-random bytes.
pub fn random_file(path: &Path, len: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(path).expect("create");
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        std::io::Write::write_all(&mut f, &buf[..n]).expect("write");
        left -= n as u64;
    }
}

/// A file of `len` bytes that compresses about as an OS image does (zstd -3: 2-4x): lines
/// of words from a small vocabulary, runs of zeros, and a random stretch now and then.
pub fn compressible_file(path: &Path, len: u64, seed: u64) {
    const WORDS: &[&str] = &[
        "the",
        "kernel",
        "module",
        "device",
        "partition",
        "block",
        "swarm",
        "piece",
        "root",
        "usr",
        "lib",
        "share",
        "config",
        "=",
        "0x",
        "return",
        "if",
        "else",
        "{",
        "}",
        ";",
        "static",
        "int",
        "char",
        "void",
        "struct",
        "include",
        "define",
        "/",
        "\n",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        match rng.gen_range(0..100) {
            0..=3 => out.resize(out.len() + rng.gen_range(512..16384), 0),
            4..=9 => {
                let n = rng.gen_range(256..4096);
                let at = out.len();
                out.resize(at + n, 0);
                rng.fill_bytes(&mut out[at..]);
            }
            _ => {
                for _ in 0..rng.gen_range(4..16) {
                    out.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
                    out.push(b' ');
                }
                out.push(b'\n');
            }
        }
    }
    out.truncate(len as usize);
    std::fs::write(path, out).expect("write");
}

/// [`make_ext4`] with [`compressible_file`]s instead of random ones.
pub fn make_ext4_compressible(
    dir: &Path,
    name: &str,
    size_mib: u64,
    data_mib: u64,
    seed: u64,
) -> (PathBuf, Vec<String>) {
    make_ext4_with(dir, name, size_mib, 4096, data_mib, seed, compressible_file)
}

/// A real ext4 image of `size_mib` MiB with `block_size` blocks, populated with files through
/// `mkfs.ext4 -d`, then every third file deleted with debugfs so free space is fragmented.
/// Returns the image path and the names of the files that remain.
pub fn make_ext4(
    dir: &Path,
    name: &str,
    size_mib: u64,
    block_size: u32,
    data_mib: u64,
    seed: u64,
) -> (PathBuf, Vec<String>) {
    make_ext4_with(dir, name, size_mib, block_size, data_mib, seed, random_file)
}

fn make_ext4_with(
    dir: &Path,
    name: &str,
    size_mib: u64,
    block_size: u32,
    data_mib: u64,
    seed: u64,
    fill: fn(&Path, u64, u64),
) -> (PathBuf, Vec<String>) {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut total = 0u64;
    let mut names = Vec::new();
    let mut i = 0;
    while total < data_mib << 20 {
        let len = rng.gen_range(1..(1u64 << 20) * 2);
        let n = format!("f{i:04}");
        fill(&src.join(&n), len, seed * 1000 + i);
        names.push(n);
        total += len;
        i += 1;
    }
    let img = dir.join(format!("{name}.img"));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", &block_size.to_string(), "-d"])
            .arg(&src)
            .arg(&img),
    );
    let mut kept = Vec::new();
    for (k, n) in names.into_iter().enumerate() {
        if k % 3 == 1 {
            run_ok(
                Command::new("debugfs")
                    .args(["-w", "-R", &format!("rm /{n}")])
                    .arg(&img),
            );
        } else {
            kept.push(n);
        }
    }
    std::fs::remove_dir_all(&src).unwrap();
    (img, kept)
}

/// A file of `len` random bytes, to stand for a target disk that held something else.
pub fn random_target(path: &Path, len: u64, seed: u64) {
    random_file(path, len, seed);
}

/// SHA-1 of a whole file.
pub fn sha1_file(path: &Path) -> String {
    hex::encode(Sha1::digest(std::fs::read(path).expect("read")))
}

/// The packed data (used runs concatenated) of `dev` according to `m`.
pub fn packed_data(dev: &Path, m: &Manifest) -> Vec<u8> {
    let f = std::fs::File::open(dev).unwrap();
    let mut out = vec![0u8; m.total_length() as usize];
    m.map.read_packed(&f, 0, &mut out).unwrap();
    out
}

pub fn read_manifest(path: &Path) -> Manifest {
    Manifest::decode(&std::fs::read(path).unwrap())
        .unwrap()
        .manifest
}

/// Asserts that `target` holds the same filesystem as `source`: e2fsck -fn passes, the used
/// runs hold the same bytes, and every named file dumps identically.
pub fn assert_same_ext4(source: &Path, target: &Path, m: &Manifest, files: &[String]) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {} failed:\n{}",
        target.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        packed_data(source, m) == packed_data(target, m),
        "used runs of {} differ from the source",
        target.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    for f in files.iter().step_by(5) {
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        run_ok(
            Command::new("debugfs")
                .args(["-R", &format!("dump /{f} {}", a.display())])
                .arg(source),
        );
        run_ok(
            Command::new("debugfs")
                .args(["-R", &format!("dump /{f} {}", b.display())])
                .arg(target),
        );
        assert_eq!(sha1_file(&a), sha1_file(&b), "file {f} differs");
    }
}

/// A child process killed (SIGKILL) when dropped; stdout/stderr go to files in `logdir`.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, logdir: &Path) -> Proc {
        let stdout = logdir.join(format!("{name}.out"));
        let stderr = logdir.join(format!("{name}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// Waits up to `timeout` for the exit code; kills and panics with the logs on timeout.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "{} did not finish within {timeout:?}\nstderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the imager on `img` and returns the manifest path.
pub fn image(img: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    run_ok(
        Command::new(bin("imager"))
            .arg(img)
            .arg("-q")
            .arg("-o")
            .arg(out)
            .args(extra),
    );
    out.to_path_buf()
}

/// The deployment token [`seeder`] gives its seeders (`--token`), so that a test knows the
/// URLs and a restarted seeder keeps them.
pub const TEST_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Starts a seeder serving `manifest` on `ip` (BitTorrent port 6881, HTTP 6880) with
/// `--token` [`TEST_TOKEN`].
pub fn seeder(ip: &str, manifest: &Path, extra: &[&str], logdir: &Path, name: &str) -> Proc {
    Proc::spawn(
        name,
        Command::new(bin("seeder"))
            .arg(manifest)
            .args([
                "--listen",
                &format!("{ip}:6881"),
                "--http",
                &format!("{ip}:6880"),
                "--token",
                TEST_TOKEN,
                "-v",
            ])
            .args(extra),
        logdir,
    )
}

/// `http://IP:6880/t/TEST_TOKEN`: where a [`seeder`] on `ip` serves everything.
pub fn seeder_base(ip: &str) -> String {
    format!("http://{ip}:6880/t/{TEST_TOKEN}")
}

/// An ext4 source for swarm tests, in its own temporary directory `d`: a `fs_mib` MiB
/// filesystem holding `data_mib` MiB of random files (`files`), imaged with 256 KiB pieces
/// (manifest at `mpath`, decoded as `m`).
pub struct Ext4Fixture {
    pub dir: tempfile::TempDir,
    pub d: PathBuf,
    pub img: PathBuf,
    pub files: Vec<String>,
    pub mpath: PathBuf,
    pub m: Manifest,
}

/// Makes an [`Ext4Fixture`] (`seed` chooses the files' bytes).
pub fn ext4_fixture(seed: u64, fs_mib: u64, data_mib: u64) -> Ext4Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (img, files) = make_ext4(&d, "src", fs_mib, 4096, data_mib, seed);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    Ext4Fixture {
        dir,
        d,
        img,
        files,
        mpath,
        m,
    }
}

/// The seeder's manifest URL for `name`.
pub fn manifest_url(ip: &str, m: &Manifest) -> String {
    format!("{}/{}.torrent", seeder_base(ip), m.name)
}

/// The seeder's status page.
pub fn status_url(ip: &str) -> String {
    format!("{}/status", seeder_base(ip))
}

/// The seeder's tracker, as the served torrent names it (`?token=`: append parameters
/// with `&`).
pub fn announce_url(ip: &str) -> String {
    format!("http://{ip}:6880/announce?token={TEST_TOKEN}")
}

/// Starts a receiver on `ip`.
pub fn receiver(
    ip: &str,
    manifest: &str,
    target: &Path,
    extra: &[&str],
    logdir: &Path,
    name: &str,
) -> Proc {
    Proc::spawn(
        name,
        Command::new(bin("receiver"))
            .args(["--manifest", manifest, "--target"])
            .arg(target)
            .args(["--listen", &format!("{ip}:6881"), "-v"])
            .args(extra),
        logdir,
    )
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// GET a URL (blocking), for polling the seeder's status page.
pub fn http_get(url: &str) -> Option<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(blockswarm_swarm::http::get(
        url,
        None,
        Duration::from_secs(5),
    ))
    .ok()
}

/// Parses the seeder's final JSON status from its stdout.
pub fn seeder_status(p: &Proc) -> serde_json::Value {
    serde_json::from_str(&p.stdout_text()).unwrap_or_else(|e| {
        panic!(
            "seeder printed no JSON status ({e}):\n{}\nstderr:\n{}",
            p.stdout_text(),
            p.stderr_text()
        )
    })
}

/// Starts one receiver per host `h` in `hosts`, on 127.0.`net`.`h`, each writing its own
/// target `t<h>.img` in `dir`, pre-filled with random bytes (seeded by `seed + h`).
pub fn start_receivers(
    net: u8,
    hosts: std::ops::RangeInclusive<u8>,
    url: &str,
    m: &Manifest,
    extra: &[&str],
    dir: &Path,
    seed: u64,
) -> Vec<(PathBuf, Proc)> {
    hosts
        .map(|h| {
            let t = dir.join(format!("t{h}.img"));
            random_target(&t, m.map.device_size(), seed + h as u64);
            let r = receiver(
                &format!("127.0.{net}.{h}"),
                url,
                &t,
                extra,
                dir,
                &format!("r{h}"),
            );
            (t, r)
        })
        .collect()
}

/// Waits for every receiver to exit 0.
pub fn wait_all_ok(rs: &mut [(PathBuf, Proc)], timeout: Duration) {
    for (_, r) in rs.iter_mut() {
        assert_eq!(
            r.wait(timeout),
            0,
            "{} failed:\n{}",
            r.name,
            r.stderr_text()
        );
    }
}

/// True when this process runs as root (loop devices, mounts). `/proc/self` belongs to the
/// process's effective user.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The `/status` JSON of the seeder on `ip` (HTTP port 6880), if it answers.
pub fn status_of(ip: &str) -> Option<serde_json::Value> {
    let b = http_get(&status_url(ip))?;
    serde_json::from_slice(&b).ok()
}

/// Waits until the seeder on `ip` answers (receivers started before would be in their
/// retry back-off).
pub fn wait_seeder_up(ip: &str, timeout: Duration) {
    assert!(
        wait_until(timeout, || status_of(ip).is_some()),
        "seeder on {ip} not up"
    );
}

/// A process's last stderr line (its error).
pub fn last_line(r: &Proc) -> String {
    r.stderr_text()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// Sends `sig` (`"STOP"`, `"CONT"`, `"KILL"`) to a running process.
pub fn signal(p: &Proc, sig: &str) {
    let pid = p.child.as_ref().expect("running").id();
    run_ok(
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string()),
    );
}

/// Bytes of the packed data that differ between `source` and `target` (0: nothing lost).
pub fn packed_bytes_differing(source: &Path, target: &Path, m: &Manifest) -> u64 {
    let (a, b) = (packed_data(source, m), packed_data(target, m));
    a.iter().zip(&b).filter(|(x, y)| x != y).count() as u64
}

/// Starts Debian's aria2c downloading `torrent` into `out` (no DHT, LPD or PEX; listening on
/// the port range `ports`, e.g. "7881-7899"; it exits once complete).
pub fn aria2c(out: &Path, torrent: &Path, ports: &str, logdir: &Path) -> Proc {
    Proc::spawn(
        "aria2c",
        Command::new("aria2c")
            .arg("-d")
            .arg(out)
            .args([
                "--seed-time=0",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--file-allocation=none",
                &format!("--listen-port={ports}"),
                "--bt-external-ip=127.0.0.1",
                "--summary-interval=0",
                "--console-log-level=warn",
            ])
            .arg(torrent),
        logdir,
    )
}

/// Waits (10 s at most) until the seeder serves the manifest at `url` and saves it as
/// `dir/served.torrent` (what a standard BitTorrent client is given); returns that path.
pub fn fetch_served_manifest(url: &str, dir: &Path) -> PathBuf {
    let served = dir.join("served.torrent");
    assert!(
        wait_until(Duration::from_secs(10), || http_get(url)
            .map(|b| std::fs::write(&served, b).is_ok())
            .unwrap_or(false)),
        "seeder never served its manifest at {url}"
    );
    served
}
