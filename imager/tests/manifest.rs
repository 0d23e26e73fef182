//! Acceptance 3: manifest round trip. `imager IMG -o M.torrent --piece-size 256K` describes one
//! file of exactly the used bytes (checked with `transmission-show`), its piece hashes equal
//! SHA-1 of the packed data computed here from the runs of `imager --map`, and `--save DIR`
//! writes that packed data and a `.torrent` with the same info dictionary.

mod common;

use std::fs;
use std::path::Path;

use blockswarm_manifest::{DecodedManifest, Manifest};
use common::*;
use sha1::{Digest, Sha1};

const PIECE: usize = 256 * 1024;

fn decode(path: &Path) -> DecodedManifest {
    Manifest::decode(&fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
}

/// A value of transmission-show's "  Key: value" lines.
fn show_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in transmission-show output:\n{text}"))
        .trim()
}

/// transmission's size strings ("62.47 MB", "980.0 kB", "123 B"; powers of 1000) in bytes,
/// with the rounding error of the printed precision.
fn parse_size(s: &str) -> (f64, f64) {
    let (num, unit) = s.trim().split_once(' ').expect("number and unit");
    let mult = match unit {
        "B" | "bytes" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        other => panic!("unknown unit {other:?}"),
    };
    let decimals = num.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let v: f64 = num.parse().unwrap();
    (v * mult, 0.5 * 10f64.powi(-decimals) * mult)
}

fn round_trip(test: &str, img: &Path, s: &Scratch) {
    let size = file_size(img);
    let map = imager_map(img, None);
    map.assert_tiles(size);
    let runs = map.used();
    let used = total(&runs);

    // The manifest.
    let m_path = s.join("M.torrent");
    run_ok(
        imager()
            .arg("-q")
            .arg(img)
            .arg("-o")
            .arg(&m_path)
            .args(["--piece-size", "256K"]),
    );
    let d = decode(&m_path);
    let m = &d.manifest;
    assert_eq!(m.piece_length as usize, PIECE);
    assert_eq!(
        m.total_length(),
        used,
        "{test}: manifest length != --map total"
    );
    assert_eq!(m.map.device_size(), size);
    let m_runs: Vec<(u64, u64)> = m
        .map
        .extents()
        .iter()
        .map(|e| (e.offset, e.length))
        .collect();
    assert_eq!(m_runs, runs, "{test}: manifest extents != --map runs");

    // transmission-show: one file, of the used size; same infohash and piece count.
    let out = run_ok(tool("transmission-show").arg(&m_path));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let files_section = text
        .split("FILES")
        .nth(1)
        .unwrap_or_else(|| panic!("no FILES section:\n{text}"));
    let file_lines: Vec<&str> = files_section
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(file_lines.len(), 1, "{test}: not exactly one file:\n{text}");
    let line = file_lines[0];
    let expected_prefix = format!("{} (", m.name);
    assert!(
        line.starts_with(&expected_prefix),
        "{test}: file line {line:?}"
    );
    let (shown, err) = parse_size(line[expected_prefix.len()..].trim_end_matches(')'));
    assert!(
        (shown - used as f64).abs() <= err,
        "{test}: transmission-show says {line:?}, used total is {used}"
    );
    assert_eq!(show_value(&text, "Hash:"), hex::encode(d.info_hash));
    let pieces: u64 = show_value(&text, "Piece Count:").parse().unwrap();
    assert_eq!(pieces, used.div_ceil(PIECE as u64));
    println!(
        "{test}: transmission-show: one file {line:?}; used total {used} bytes, {pieces} pieces"
    );

    // Piece hashes against SHA-1 of the packed data read here, run by run.
    let packed = read_runs(img, &runs);
    assert_eq!(packed.len() as u64, used);
    let ours: Vec<[u8; 20]> = packed
        .chunks(PIECE)
        .map(|c| Sha1::digest(c).into())
        .collect();
    assert_eq!(ours.len(), m.piece_hashes.len(), "{test}: piece count");
    for (i, (a, b)) in ours.iter().zip(&m.piece_hashes).enumerate() {
        assert_eq!(a, b, "{test}: piece {i} hash differs");
    }

    // --save DIR (together with -o): packed file and NAME.torrent with the same info dict.
    let dir = s.join("saved");
    let m2_path = s.join("M2.torrent");
    run_ok(
        imager()
            .arg("-q")
            .arg(img)
            .arg("-o")
            .arg(&m2_path)
            .arg("--save")
            .arg(&dir)
            .args(["--piece-size", "256K", "--name", "disk.packed"]),
    );
    let saved = fs::read(dir.join("disk.packed")).unwrap();
    assert!(
        saved == packed,
        "{test}: --save data differs from the packed runs"
    );
    let t_saved = decode(&dir.join("disk.packed.torrent"));
    let t_out = decode(&m2_path);
    assert_eq!(
        t_saved.info_hash, t_out.info_hash,
        "{test}: info dicts differ"
    );
    assert_eq!(t_saved.manifest.piece_hashes, m.piece_hashes);
    assert_eq!(t_saved.manifest.map, m.map);
    assert_eq!(t_saved.manifest.name, "disk.packed");
    // The same source and options give the same manifest info (only the name differs here).
    let again = s.join("M3.torrent");
    run_ok(imager().arg("-q").arg(img).arg("-o").arg(&again).args([
        "--piece-size",
        "256K",
        "--threads",
        "1",
    ]));
    assert_eq!(
        decode(&again).info_hash,
        d.info_hash,
        "{test}: not deterministic"
    );
}

#[test]
fn ext4_manifest_round_trip() {
    let test = "manifest_ext4_1k";
    if !need_tools(test, &["mkfs.ext4", "debugfs", "transmission-show"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 301, 30, 2 << 20);
    let img = s.join("src.img");
    sparse_file(&img, 64 << 20);
    // 1 KiB blocks: runs start and end off the 256 KiB piece grid.
    run_ok(
        tool("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024", "-d"])
            .arg(&tree)
            .arg(&img),
    );
    for f in pick(&files, 0, 4) {
        run_ok(
            tool("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("rm /{}", f.rel))
                .arg(&img),
        );
    }
    round_trip(test, &img, &s);
}

#[test]
fn fat32_manifest_round_trip() {
    let test = "manifest_fat32";
    if !need_tools(test, &["mkfs.fat", "mcopy", "mdel", "transmission-show"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 302, 24, 1 << 20);
    let img = s.join("src.img");
    // 512-byte clusters: the map has many short runs.
    make_fat(&img, 32, 64, &["-s", "1"], &tree);
    fat_delete(&img, &pick(&files, 1, 3));
    round_trip(test, &img, &s);
}
