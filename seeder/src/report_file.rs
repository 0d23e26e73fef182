//! `seeder --report FILE.json|FILE.csv`: what happened to each machine, written at exit
//! (the `--expect` end, an error, or SIGINT/SIGTERM), atomically (a temporary file in the
//! same directory, then rename). CSV when the name ends in `.csv`, else JSON.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::machines::{Machine, Shown};

/// The image the deployment served.
#[derive(Debug, Serialize)]
pub struct Image {
    pub name: String,
    pub info_hash: String,
    pub size: u64,
}

/// One machine's line.
#[derive(Debug, Serialize, PartialEq)]
pub struct Entry {
    pub peer_id: String,
    pub ip: String,
    pub hostname: Option<String>,
    pub mac: Option<String>,
    pub target: Option<String>,
    /// Unix times, seconds.
    pub start: f64,
    pub end: Option<f64>,
    pub bytes_done: u64,
    /// bytes_done over (end or exit time) - start, bytes/s.
    pub average_rate: f64,
    /// done, failed, lost, running-at-exit.
    pub result: &'static str,
    pub error: Option<String>,
    pub exit: Option<i32>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub report_version: u32,
    pub image: Image,
    /// Why the seeder stopped: `expect` (all accounted for), `signal`, `error`.
    pub ended_by: &'static str,
    pub machines: Vec<Entry>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The entries for `rows`, the seeder having started at `started` and stopping `now`
/// (an offset from its start) (pure).
pub fn entries(rows: &[Machine], started: SystemTime, now: Duration) -> Vec<Entry> {
    let base = unix(started);
    rows.iter()
        .map(|m| {
            let end = m.ended;
            let span = end.unwrap_or(now.as_secs_f64()) - m.first_seen;
            Entry {
                peer_id: m.peer_id.clone(),
                ip: m.ip.clone(),
                hostname: m.hostname.clone(),
                mac: m.mac.clone(),
                target: m.target.clone(),
                start: base + m.first_seen,
                end: end.map(|e| base + e),
                bytes_done: m.bytes_done,
                average_rate: if span > 0.0 {
                    m.bytes_done as f64 / span
                } else {
                    0.0
                },
                result: match m.state {
                    Shown::Done => "done",
                    Shown::Failed => "failed",
                    Shown::Lost => "lost",
                    _ => "running-at-exit",
                },
                error: m.error.clone(),
                exit: m.exit,
            }
        })
        .collect()
}

/// Writes `r` to `path` (CSV for `.csv`, else JSON) through a temporary file and a rename.
pub fn write(path: &Path, r: &Report) -> std::io::Result<()> {
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let bytes = if csv {
        // The image's columns first on every line: one table, nothing lost to a reader
        // that takes only the rows.
        #[derive(Serialize)]
        struct ImageCols<'a> {
            image: &'a str,
            info_hash: &'a str,
            image_bytes: u64,
        }
        let img = ImageCols {
            image: &r.image.name,
            info_hash: &r.image.info_hash,
            image_bytes: r.image.size,
        };
        let mut w = csv::Writer::from_writer(Vec::new());
        for e in &r.machines {
            w.serialize((&img, e)).map_err(std::io::Error::other)?;
        }
        w.into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?
    } else {
        serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Waits for SIGINT or SIGTERM; returns its number (never, if handlers cannot be set).
pub async fn signalled() -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => 2,
        _ = term.recv() => 15,
    }
}

impl crate::app::App {
    /// Writes the `--report` file now.
    pub(crate) fn write_report(&self, path: &Path, ended_by: &'static str) -> std::io::Result<()> {
        let rows = self.machine_rows();
        let now = self.started.elapsed();
        let started = SystemTime::now() - now;
        write(
            path,
            &Report {
                report_version: 1,
                image: Image {
                    name: self.name.clone(),
                    info_hash: hex::encode(self.info_hash),
                    size: self.total,
                },
                ended_by,
                machines: entries(&rows, started, now),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: Shown, ended: Option<f64>) -> Machine {
        Machine {
            hostname: Some("pc, \"one\"".into()),
            state,
            bytes_done: 100,
            reports: true,
            last_seen: 3.0,
            ended,
            ..Machine::new(&"01".repeat(20), "127.0.200.2", 100, 2.0)
        }
    }

    #[test]
    fn results_rates_and_both_formats() {
        let rows = [
            row(Shown::Done, Some(12.0)),
            row(Shown::Downloading, None),
            row(Shown::Lost, None),
        ];
        let e = entries(
            &rows,
            UNIX_EPOCH + Duration::from_secs(1000),
            Duration::from_secs(52),
        );
        assert_eq!(e[0].result, "done");
        assert_eq!(e[0].start, 1002.0);
        assert_eq!(e[0].end, Some(1012.0));
        assert_eq!(e[0].average_rate, 10.0);
        assert_eq!(e[1].result, "running-at-exit");
        assert_eq!(e[1].average_rate, 2.0);
        assert_eq!(e[2].result, "lost");
        let r = Report {
            report_version: 1,
            image: Image {
                name: "x".into(),
                info_hash: "ab".into(),
                size: 100,
            },
            ended_by: "expect",
            machines: e,
        };
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("r.json"), &r).unwrap();
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("r.json")).unwrap()).unwrap();
        assert_eq!(j["machines"][2]["result"], "lost");
        assert_eq!(j["image"]["size"], 100);
        write(&d.path().join("r.csv"), &r).unwrap();
        let c = std::fs::read_to_string(d.path().join("r.csv")).unwrap();
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 4, "{c}");
        assert!(
            lines[0].starts_with("image,info_hash,image_bytes,peer_id,ip,hostname"),
            "{c}"
        );
        assert!(lines[1].starts_with("x,ab,100,"), "{c}");
        assert!(lines[1].contains("\"pc, \"\"one\"\"\""), "{c}");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            2,
            "no temporary left"
        );
    }
}
