//! The one size parser and the one duration parser of the three programs.
//!
//! Sizes (bytesize): `256M`, `1.5k`, `2GiB`, `100` (bytes). A bare `K`/`M`/`G` suffix means
//! powers of 1024, as the flags always did; `KB`/`MB` (SI) are read as 1024-based too, so
//! that `12MB` and `12M` agree for an operator. Durations (humantime): `90s`, `2m`, `1h30m`,
//! `500ms`; a plain number is seconds, `0` is zero.

use std::time::Duration;

/// Parses a positive byte count (at least one byte).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("not a size: {s:?} (examples: 12M, 500k, 1G, 4096)");
    // bytesize reads `1K` as 1000: spell every suffix in IEC so that K/M/G stay 1024-based.
    let lower = t.to_ascii_lowercase();
    let num_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(num_end);
    let unit = unit.trim();
    let (iec, mult) = match unit {
        "" | "b" => ("B", 1u64),
        "k" | "kb" | "kib" => ("KiB", 1 << 10),
        "m" | "mb" | "mib" => ("MiB", 1 << 20),
        "g" | "gb" | "gib" => ("GiB", 1 << 30),
        "t" | "tb" | "tib" => ("TiB", 1 << 40),
        _ => return Err(bad()),
    };
    if num.is_empty() || num.parse::<f64>().is_err() {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    if v * mult as f64 >= u64::MAX as f64 / 2.0 {
        return Err(format!("size out of range: {s:?}"));
    }
    let b: bytesize::ByteSize = format!("{num} {iec}").parse().map_err(|_| bad())?;
    if b.as_u64() == 0 {
        return Err(if v > 0.0 {
            format!(
                "size {s:?} is less than one byte (plain numbers are bytes: did you mean {t}M?)"
            )
        } else {
            format!("size must be positive: {s:?}")
        });
    }
    Ok(b.as_u64())
}

/// Parses a duration: humantime (`90s`, `10m`, `1h 30m`, `250ms`) or a plain number of
/// seconds (`5`, `0`, `1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("not a duration: {s:?} (examples: 90s, 10m, 1h, 0)");
    if let Ok(v) = t.parse::<f64>() {
        if !(0.0..=1e9).contains(&v) {
            return Err(format!("duration out of range: {s:?}"));
        }
        return Ok(Duration::from_secs_f64(v));
    }
    let d = humantime::parse_duration(t).map_err(|_| bad())?;
    if d > Duration::from_secs(1_000_000_000) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_the_flags_always_took() {
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("2MB").unwrap(), 2 << 20);
        assert_eq!(parse_size(" 4 M ").unwrap(), 4 << 20);
        assert_eq!(parse_size("0.5M").unwrap(), 512 << 10);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
    }

    #[test]
    fn sizes_refused() {
        for bad in [
            "0",
            "0M",
            "fast",
            "0.5",
            "nan",
            "inf",
            "1e30G",
            "20000000T",
            "99999999999999999999",
            "-1",
            "M",
            "",
            "12X",
            "1.2.3M",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("0.5").unwrap_err().contains("did you mean 0.5M"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["soon", "-1", "", "1e12", "5 parsecs", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
