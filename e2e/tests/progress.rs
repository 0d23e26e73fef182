//! Progress without a terminal (issue 15 item 6) and the exit codes in `--help` (item 7):
//! real seeder and receiver processes, stderr to a file (not a TTY), a seeder slowed by
//! `--upload-limit` so that the download lasts several progress intervals.
//! Addresses: 127.0.210.x (plain lines), 127.0.211.x (JSON lines).

use std::process::Command;
use std::time::Duration;

use blockswarm_e2e::*;

const T: Duration = Duration::from_secs(120);

/// Runs one seeder (`--expect 1`, 2 MiB/s) and one receiver with `extra` options; returns
/// both after the receiver exited 0.
fn deploy(net: u8, seed: u64, extra: &[&str]) -> (Ext4Fixture, Proc, Proc) {
    let f = ext4_fixture(seed, 64, 12);
    let sip = format!("127.0.{net}.1");
    let s = seeder(
        &sip,
        &f.mpath,
        &[
            "--expect",
            "1",
            "--upload-limit",
            "2M",
            "--announce-interval",
            "1",
            "--progress-interval",
            "1s",
        ],
        &f.d,
        "seeder",
    );
    wait_seeder_up(&sip, T);
    let t = f.d.join("t.img");
    random_target(&t, f.m.map.device_size(), seed + 1);
    let mut r = receiver(
        &format!("127.0.{net}.2"),
        &manifest_url(&sip, &f.m),
        &t,
        &[&["--no-resume", "--progress-interval", "1s"], extra].concat(),
        &f.d,
        "r",
    );
    assert_eq!(r.wait(T), 0, "receiver failed:\n{}", r.stderr_text());
    assert_same_ext4(&f.img, &t, &f.m, &f.files);
    (f, s, r)
}

/// The lines of `text` before the receiver's `complete` line.
fn before_complete(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !(l.starts_with("receiver: ") && l.contains(" complete: ")))
        .collect()
}

#[test]
fn receiver_and_seeder_print_progress_lines_to_a_file() {
    let (_f, mut s, r) = deploy(210, 21000, &[]);
    let err = r.stderr_text();
    assert!(
        err.lines().any(|l| l.contains(" complete: ")),
        "no complete line:\n{err}"
    );
    let lines: Vec<&str> = before_complete(&err)
        .into_iter()
        .filter(|l| l.starts_with("receiver: progress downloading "))
        .collect();
    assert!(
        lines.len() >= 2,
        "fewer than 2 progress lines before completion:\n{err}"
    );
    // The percentage grows, and a line carries the rate and the peers.
    let pct = |l: &str| -> f64 {
        l.split_whitespace()
            .find(|w| w.ends_with('%'))
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    assert!(pct(lines[0]) < pct(lines[lines.len() - 1]), "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| l.contains(" MiB/s ETA ") && l.contains(" peers ")));
    assert_eq!(s.wait(T), 0, "seeder:\n{}", s.stderr_text());
    let serr = s.stderr_text();
    let slines: Vec<&str> = serr
        .lines()
        .filter(|l| l.starts_with("seeder: progress machines done "))
        .collect();
    assert!(
        slines.len() >= 2,
        "seeder printed no progress lines:\n{serr}"
    );
    assert!(
        slines.iter().any(|l| l.contains("machines done 0/1 ")),
        "{slines:?}"
    );
}

#[test]
fn json_progress_lines_parse() {
    let (_f, mut s, r) = deploy(211, 21100, &["--progress", "json"]);
    let err = r.stderr_text();
    let json: Vec<serde_json::Value> = before_complete(&err)
        .into_iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(json.len() >= 2, "fewer than 2 JSON lines:\n{err}");
    for v in &json {
        assert_eq!(v["program"], "receiver", "{v}");
        assert_eq!(v["state"], "downloading", "{v}");
        assert!(v["bytes_total"].as_u64().unwrap() > 0, "{v}");
        assert!(v["bytes_done"].as_u64().unwrap() <= v["bytes_total"].as_u64().unwrap());
    }
    let done = |v: &serde_json::Value| v["bytes_done"].as_u64().unwrap();
    assert!(done(&json[0]) < done(&json[json.len() - 1]));
    assert!(
        !err.lines().any(|l| l.starts_with("receiver: progress ")),
        "plain lines beside JSON:\n{err}"
    );
    assert_eq!(s.wait(T), 0, "seeder:\n{}", s.stderr_text());
}

#[test]
fn help_lists_the_exit_codes() {
    for prog in ["imager", "seeder", "receiver"] {
        let out = run_ok(Command::new(bin(prog)).arg("--help"));
        let h = String::from_utf8_lossy(&out.stdout);
        assert!(h.contains("Exit codes:"), "{prog} --help:\n{h}");
        for (code, meaning) in blockswarm_manifest::exit::MEANINGS {
            assert!(
                h.contains(&format!("{code:>2}  {meaning}")),
                "{prog} --help lacks code {code}:\n{h}"
            );
        }
    }
    let out = run_ok(Command::new(bin("receiver")).arg("--help"));
    let h = String::from_utf8_lossy(&out.stdout);
    assert!(h.contains(" 4  Bad target"), "{h}");
    assert!(h.contains("PEERS="), "{h}");
    assert!(h.contains("--progress <PROGRESS>"), "{h}");
}
