//! The operator's view (issue 15): receivers report to the seeder, headless Chromium renders
//! the dashboard, `/status` matches docs/status.schema.json, and `--report` lists every
//! machine with its result. Loopback subnets 127.0.200.* and 127.0.201.*.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use blockswarm_e2e::*;

fn schema_validator() -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status.schema.json");
    let schema: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema).expect("docs/status.schema.json is a valid schema")
}

fn assert_valid(v: &jsonschema::Validator, status: &serde_json::Value) {
    let errs: Vec<String> = v
        .iter_errors(status)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errs.is_empty(),
        "status does not match the schema: {errs:#?}\n{status:#}"
    );
}

/// Runs headless Chromium on `url` with `extra` arguments (a fresh profile).
fn chromium(url: &str, extra: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium (Debian package `chromium`, scripts/install-deps.sh) must run")
}

/// The `<tr class="machine STATE" ...>...</tr>` rows of a dumped DOM.
fn rows(dom: &str) -> Vec<(String, String)> {
    dom.split("<tr class=\"machine ")
        .skip(1)
        .map(|r| {
            let state = r.split('"').next().unwrap_or_default().to_string();
            let body = r.split("</tr>").next().unwrap_or_default().to_string();
            (state, body)
        })
        .collect()
}

fn artefact_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>: artefacts in target/test-artefacts
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let d = target.join("test-artefacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn report_results(path: &Path) -> Vec<(String, String, String)> {
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    r["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["ip"].as_str().unwrap().to_string(),
                m["result"].as_str().unwrap().to_string(),
                m["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn dashboard_shows_two_done_and_one_failed_and_the_report_lists_them() {
    let f = ext4_fixture(1501, 32, 6);
    let sip = "127.0.200.1";
    let report = f.d.join("R.json");
    // Announce interval 20: the seeder stays up 41 s after the last receiver, time enough
    // for Chromium on a loaded machine.
    let mut seeder = seeder(
        sip,
        &f.mpath,
        &[
            "--expect",
            "3",
            "--announce-interval",
            "20",
            "--report",
            report.to_str().unwrap(),
        ],
        &f.d,
        "seeder",
    );
    wait_seeder_up(sip, Duration::from_secs(20));
    let url = manifest_url(sip, &f.m);
    let mut good = start_receivers(200, 2..=3, &url, &f.m, &[], &f.d, 7);
    let small = f.d.join("small.img");
    random_target(&small, f.m.map.device_size() / 2, 1);
    let mut bad = receiver("127.0.200.4", &url, &small, &[], &f.d, "r4-small");
    wait_all_ok(&mut good, Duration::from_secs(120));
    assert_eq!(
        bad.wait(Duration::from_secs(60)),
        4,
        "{}",
        bad.stderr_text()
    );

    // The reports are in: 2 done, 1 failed.
    let mut last = None;
    let ok = wait_until(Duration::from_secs(15), || {
        last = status_of(sip);
        last.as_ref().is_some_and(|s| {
            s["totals"]["done"] == 2 && s["totals"]["failed"] == 1 && s["totals"]["machines"] == 3
        })
    });
    let status = last.expect("status");
    assert!(ok, "status never showed 2 done, 1 failed:\n{status:#}");
    assert_valid(&schema_validator(), &status);
    let failed = status["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["state"] == "failed")
        .unwrap();
    assert_eq!(failed["ip"], "127.0.200.4");
    assert_eq!(failed["exit"], 4);
    assert!(
        failed["reports"].as_bool().unwrap(),
        "the failed receiver reported itself"
    );
    assert_eq!(failed["target"], small.to_str().unwrap());
    assert!(failed["hostname"].is_string());

    // The token-less root says where the dashboard is; the dashboard itself needs the token.
    let root = String::from_utf8(http_get(&format!("http://{sip}:6880/")).unwrap()).unwrap();
    assert!(root.contains("/t/TOKEN/"), "{root}");

    let dash = format!("{}/", seeder_base(sip));
    let out = chromium(&dash, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    let rs = rows(&dom);
    assert_eq!(
        rs.len(),
        3,
        "3 machine rows expected in the DOM:\n{dom}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Vec<_> = rs.iter().filter(|(s, _)| s == "done").collect();
    assert_eq!(done.len(), 2, "{dom}");
    for (_, body) in &done {
        assert!(body.contains(">100%<"), "a done row not at 100%: {body}");
    }
    let failed: Vec<_> = rs.iter().filter(|(s, _)| s == "failed").collect();
    assert_eq!(failed.len(), 1, "{dom}");
    assert!(
        failed[0].1.contains("smaller than the source needs"),
        "the failed row lacks the size error: {}",
        failed[0].1
    );
    assert!(
        failed[0].1.contains(">0%<"),
        "a receiver refused at its target check wrote nothing: {}",
        failed[0].1
    );
    assert!(dom.contains("127.0.200.4"), "{dom}");

    let shot = artefact_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &dash,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,800",
        ],
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --expect 3 reached with one failure: exit 8, and the report lists all three.
    assert_eq!(
        seeder.wait(Duration::from_secs(60)),
        8,
        "{}",
        seeder.stderr_text()
    );
    let mut res = report_results(&report);
    res.sort();
    assert_eq!(res.len(), 3, "{res:?}");
    assert_eq!(
        (res[0].0.as_str(), res[0].1.as_str()),
        ("127.0.200.2", "done")
    );
    assert_eq!(
        (res[1].0.as_str(), res[1].1.as_str()),
        ("127.0.200.3", "done")
    );
    assert_eq!(
        (res[2].0.as_str(), res[2].1.as_str()),
        ("127.0.200.4", "failed")
    );
    assert!(
        res[2].2.contains("smaller than the source needs"),
        "{res:?}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["image"]["size"], f.m.total_length());
    assert_eq!(r["ended_by"], "expect");
}

#[test]
fn a_receiver_killed_mid_way_is_lost_in_the_report_not_done() {
    let f = ext4_fixture(1502, 32, 8);
    let sip = "127.0.201.1";
    let report = f.d.join("R.json");
    let mut seeder = seeder(
        sip,
        &f.mpath,
        &["--upload-limit", "1M", "--report", report.to_str().unwrap()],
        &f.d,
        "seeder",
    );
    wait_seeder_up(sip, Duration::from_secs(20));
    let url = manifest_url(sip, &f.m);
    let mut rs = start_receivers(201, 2..=2, &url, &f.m, &[], &f.d, 3);
    // Wait for the event: it has bytes on its target, as the dashboard shows.
    let machine = |s: &serde_json::Value| {
        s["machines"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["ip"] == "127.0.201.2").cloned())
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            status_of(sip).and_then(|s| machine(&s)).is_some_and(|m| {
                m["bytes_done"].as_u64().unwrap_or(0) > 0 && m["state"] == "downloading"
            })
        }),
        "the receiver never showed progress: {:?}",
        status_of(sip)
    );
    let (_, r) = &mut rs[0];
    signal(r, "KILL");
    r.kill();
    let mut last = None;
    let lost = wait_until(Duration::from_secs(40), || {
        last = status_of(sip).and_then(|s| machine(&s));
        last.as_ref().is_some_and(|m| m["state"] == "lost")
    });
    assert!(lost, "the killed receiver never became lost: {last:?}");
    assert!(
        last.unwrap()["bytes_done"].as_u64().unwrap() < f.m.total_length(),
        "killed after it had everything: the test did not kill it mid-way"
    );
    signal(&seeder, "TERM");
    assert_eq!(
        seeder.wait(Duration::from_secs(20)),
        143,
        "{}",
        seeder.stderr_text()
    );
    let res = report_results(&report);
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!(res[0].0, "127.0.201.2");
    assert!(res[0].1 == "lost" || res[0].1 == "failed", "{res:?}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["ended_by"], "signal");
}
