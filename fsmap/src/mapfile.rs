// SPDX-License-Identifier: GPL-2.0-or-later
//! ddrescue domain mapfiles, as written by `partclone.<fs> -D`.
//!
//! ```text
//! # Domain logfile created by ...
//! # current_pos  current_status
//! 0x00400000     ?
//! #      pos        size  status
//! 0x00000000  0x000DF200  +
//! 0x000DF200  0x00004000  ?
//! ```
//!
//! Comment lines start with `#`. The first other line is the status line
//! (`current_pos current_status [current_pass]`); the following lines are
//! blocks `pos size status`, where status `+` means "in the domain" (used)
//! and `?` means "not in the domain". Numbers are hexadecimal with a `0x`
//! prefix or decimal.

use std::io::Write;

use crate::runs::normalize_runs;
use crate::FsError;

fn err(line: usize, detail: impl Into<String>) -> FsError {
    FsError::Mapfile {
        line,
        detail: detail.into(),
    }
}

fn parse_num(s: &str, line: usize, what: &str) -> Result<u64, FsError> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        s.parse::<u64>()
    };
    r.map_err(|_| {
        err(
            line,
            format!("bad {what} {s:?} (expected 0x-hex or decimal)"),
        )
    })
}

const BLOCK_STATUS: &[u8] = b"?*/-+";
const POS_STATUS: &[u8] = b"?*/-FG+";

/// Parse a domain mapfile and return its used (`+`) runs as `(offset,
/// length)`, sorted and merged.
pub fn parse_mapfile(text: &str) -> Result<Vec<(u64, u64)>, FsError> {
    let mut seen_status = false;
    let mut used = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_block = fields.len() == 3 && fields[1].bytes().all(|b| b.is_ascii_alphanumeric());
        if !is_block {
            // The status line: current_pos current_status [current_pass].
            if seen_status {
                return Err(err(ln, format!("unexpected line {line:?}")));
            }
            if !(2..=3).contains(&fields.len()) {
                return Err(err(ln, format!("malformed status line {line:?}")));
            }
            parse_num(fields[0], ln, "current position")?;
            let st = fields[1].as_bytes();
            if st.len() != 1 || !POS_STATUS.contains(&st[0]) {
                return Err(err(ln, format!("bad current status {:?}", fields[1])));
            }
            if let Some(pass) = fields.get(2) {
                parse_num(pass, ln, "current pass")?;
            }
            seen_status = true;
            continue;
        }
        let pos = parse_num(fields[0], ln, "position")?;
        let size = parse_num(fields[1], ln, "size")?;
        let st = fields[2].as_bytes();
        if st.len() != 1 || !BLOCK_STATUS.contains(&st[0]) {
            return Err(err(ln, format!("bad block status {:?}", fields[2])));
        }
        if pos.checked_add(size).is_none() {
            return Err(err(ln, format!("block {pos:#x}+{size:#x} overflows")));
        }
        // The status line comes first in ddrescue's format; accept a file
        // without one but not one after the blocks.
        seen_status = true;
        if st[0] == b'+' && size > 0 {
            used.push((pos, size));
        }
    }
    Ok(normalize_runs(used, u64::MAX))
}

/// Write a domain mapfile for `runs` (used, `+`) on a device of
/// `device_size` bytes, gaps as `?`, in the layout `partclone -D` uses.
///
/// The runs are normalized first; a run reaching beyond `device_size` is an
/// error.
pub fn write_mapfile<W: Write>(
    mut w: W,
    runs: &[(u64, u64)],
    device_size: u64,
) -> Result<(), FsError> {
    for &(off, len) in runs {
        let inside = off.checked_add(len).is_some_and(|end| end <= device_size);
        if !inside {
            return Err(err(
                0,
                format!("run {off:#x}+{len:#x} lies beyond the device size {device_size:#x}"),
            ));
        }
    }
    let runs = normalize_runs(runs.to_vec(), device_size);
    let io = |e| FsError::Io {
        context: "writing a domain mapfile".into(),
        source: e,
    };
    let mut out = String::new();
    out.push_str(&format!(
        "# Domain logfile created by blockswarm-fsmap v{}\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str("# Offset: 0x00000000\n");
    out.push_str("# current_pos  current_status\n");
    out.push_str(&format!("0x{device_size:08X}     ?\n"));
    out.push_str("#      pos        size  status\n");
    w.write_all(out.as_bytes()).map_err(io)?;
    let mut pos = 0u64;
    let line = |w: &mut W, off: u64, len: u64, st: char| {
        w.write_all(format!("0x{off:08X}  0x{len:08X}  {st}\n").as_bytes())
    };
    for (off, len) in runs {
        if off > pos {
            line(&mut w, pos, off - pos, '?').map_err(io)?;
        }
        line(&mut w, off, len, '+').map_err(io)?;
        pos = off + len;
    }
    if pos < device_size {
        line(&mut w, pos, device_size - pos, '?').map_err(io)?;
    }
    w.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTCLONE_FAT12: &str = "\
# Domain logfile created by unset_name v0.3.23
# Source: f12.img
# Offset: 0x00000000
# current_pos  current_status
0x00400000     ?
#      pos        size  status
0x00000000  0x000DF200  +
0x000DF200  0x00004000  ?
0x000E3200  0x00014000  +
0x000F7200  0x00009000  ?
0x00100200  0x00016800  +
0x00116A00  0x001EE000  ?
0x00304A00  0x000DA800  +
0x003DF200  0x00004000  ?
0x003E3200  0x00014000  +
0x003F7200  0x00008800  ?
0x003FFA00  0x00000600  +
";

    #[test]
    fn parses_partclone_output() {
        let runs = parse_mapfile(PARTCLONE_FAT12).unwrap();
        assert_eq!(
            runs,
            vec![
                (0, 0xDF200),
                (0xE3200, 0x14000),
                (0x100200, 0x16800),
                (0x304A00, 0xDA800),
                (0x3E3200, 0x14000),
                (0x3FFA00, 0x600),
            ]
        );
    }

    #[test]
    fn round_trip() {
        let runs = parse_mapfile(PARTCLONE_FAT12).unwrap();
        let mut out = Vec::new();
        write_mapfile(&mut out, &runs, 0x400000).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Same block lines as partclone wrote.
        let blocks = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(blocks(&text), blocks(PARTCLONE_FAT12));
        assert_eq!(parse_mapfile(&text).unwrap(), runs);
    }

    #[test]
    fn status_with_pass_and_decimal() {
        let runs = parse_mapfile("0 ? 1\n0 10 +\n10 5 -\n15 5 +\n20 5 +\n").unwrap();
        assert_eq!(runs, vec![(0, 10), (15, 10)]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "0x0 ?\n0x0 0x10 x\n",
            "0x0 ?\n0xZZ 0x10 +\n",
            "0x0 ?\n0x0 ?\n",
            "0x0 ?\n0xFFFFFFFFFFFFFFFF 0x10 +\n",
            "hello\n",
        ] {
            let e = parse_mapfile(bad).unwrap_err();
            assert!(
                matches!(e, FsError::Mapfile { line: 1 | 2, .. }),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn write_rejects_out_of_range() {
        assert!(write_mapfile(Vec::new(), &[(10, 10)], 15).is_err());
        let mut out = Vec::new();
        write_mapfile(&mut out, &[], 16).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("0x00000000  0x00000010  ?\n"));
    }
}
