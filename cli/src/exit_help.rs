//! The `--help` text listing the exit codes, from the one table in
//! `blockswarm_manifest::exit::MEANINGS`.

use blockswarm_manifest::exit::MEANINGS;

/// `Exit codes:` and one line per code (for clap's `after_long_help`).
pub fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, meaning) in MEANINGS {
        s.push_str(&format!("  {code:>2}  {meaning}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockswarm_manifest::exit;

    #[test]
    fn every_code_is_listed_once_in_order() {
        let h = exit_codes_help();
        let codes: Vec<i32> = h
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(codes, (exit::OK..=exit::SOURCE_CHANGED).collect::<Vec<_>>());
        assert!(h.contains("   4  Bad target"), "{h}");
    }
}
