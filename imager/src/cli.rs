//! Command line of `imager`. Every flag has an environment-variable mirror.

use std::path::PathBuf;

use clap::Parser;

/// `auto` (0) or an explicit piece size.
fn parse_piece_size(s: &str) -> Result<u32, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(0);
    }
    let v = blockswarm_cli::parse_size(s)
        .map_err(|_| format!("not a size: {s:?} (examples: 4M, 1024K, 262144)"))?;
    let (lo, hi) = (
        blockswarm_manifest::MIN_PIECE_LENGTH as u64,
        blockswarm_manifest::MAX_PIECE_LENGTH as u64,
    );
    if !v.is_power_of_two() || v < lo || v > hi {
        return Err(format!(
            "piece size must be a power of two from 16K to 64M, got {v}"
        ));
    }
    Ok(v as u32)
}

/// Finds the used blocks of a disk or partition, hashes them (SHA-1, BitTorrent v1 pieces) and writes
/// a blockswarm manifest (.torrent with the extent map) to stdout.
///
/// Typical use: `imager /dev/sda1 | seeder`.
#[derive(Debug, Parser)]
#[command(name = "imager", version, about, long_about = None,
          after_long_help = blockswarm_cli::exit_codes_help())]
pub struct Cli {
    /// What to image: a whole disk (/dev/sda, /dev/nvme0n1 or a disk image file with a GPT or
    /// MBR partition table: every partition in one manifest) or one partition (/dev/sda1 or a
    /// partition image file).
    #[arg(env = "IMAGER_SOURCE", required_unless_present = "list_fs")]
    pub source: Option<PathBuf>,

    /// Filesystem: auto, or a name as partclone spells it (extfs, ntfs, fat, exfat, xfs,
    /// btrfs, ...) or a common alias (ext4, vfat, fat32); dd = every block.
    #[arg(long, env = "IMAGER_FS", default_value = "auto")]
    pub fs: String,

    /// Print the used-block map as a ddrescue domain mapfile (like `partclone.<fs> -D`) and
    /// exit.
    #[arg(long, env = "IMAGER_MAP")]
    pub map: bool,

    /// Print the partition layout of a whole disk (number, start, end, size, type, name,
    /// filesystem and used bytes of every partition) and exit.
    #[arg(long, env = "IMAGER_LIST")]
    pub list: bool,

    /// List the filesystems this build supports and the backend used for each, and exit.
    #[arg(long, env = "IMAGER_LIST_FS")]
    pub list_fs: bool,

    /// Piece size: a power of two from 16K to 64M, or auto: about 1024 pieces, from 256K
    /// (small images still have enough pieces to trade) to 4M (big ones keep a small
    /// manifest).
    #[arg(long, env = "IMAGER_PIECE_SIZE", default_value = "auto", value_parser = parse_piece_size)]
    pub piece_size: u32,

    /// Torrent name (and file name of the packed data with --save). Default: SOURCE's file
    /// name plus `.packed`.
    #[arg(long, env = "IMAGER_NAME")]
    pub name: Option<String>,

    /// Tracker announce URL to put in the manifest (the seeder replaces it with its own).
    #[arg(long, env = "IMAGER_TRACKER")]
    pub tracker: Option<String>,

    /// Write the manifest to FILE instead of stdout.
    #[arg(short, long, env = "IMAGER_OUTPUT")]
    pub output: Option<PathBuf>,

    /// Image mode: also write the packed data file and NAME.torrent into DIR, seedable by any
    /// BitTorrent client.
    #[arg(long, env = "IMAGER_SAVE", value_name = "DIR")]
    pub save: Option<PathBuf>,

    /// With --save: store the packed data compressed, as NAME.bsz (16 KiB blocks, each a
    /// zstd frame or raw; layout in manifest/FORMAT.md) instead of NAME. `seeder --image DIR`
    /// serves it, its frames as they are to blockswarm receivers; other BitTorrent clients
    /// cannot seed it.
    #[arg(long, env = "IMAGER_COMPRESS", requires = "save")]
    pub compress: bool,

    /// Copy the used runs straight onto TARGET (a partition or image file at least as large
    /// as the source), like `partclone -b`. No manifest is printed unless -o is given.
    #[arg(long, env = "IMAGER_COPY_TO", value_name = "TARGET")]
    pub copy_to: Option<PathBuf>,

    /// Image a source that is mounted read-write (the copy may be torn).
    #[arg(long, env = "IMAGER_FORCE")]
    pub force: bool,

    /// Image a filesystem that fails the check anyway, with a warning: errors recorded, not
    /// cleanly unmounted, a journal to replay, an NTFS volume marked dirty, or a bitmap that
    /// disagrees with the free counts (default: refuse, exit 5). Also passes -I to
    /// `partclone.<fs> -D`.
    #[arg(long, env = "IMAGER_IGNORE_FS_CHECK", value_parser = clap::builder::BoolishValueParser::new())]
    pub ignore_fs_check: bool,

    /// Hashing threads (default: all cores).
    #[arg(long, env = "IMAGER_THREADS")]
    pub threads: Option<usize>,

    /// No progress bar and no summary line.
    #[arg(short, long, env = "IMAGER_QUIET")]
    pub quiet: bool,

    /// More logs (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The `auto` piece size for `used` bytes (see `blockswarm_manifest::auto_piece_length`).
pub fn auto_piece_size(used: u64) -> u32 {
    blockswarm_manifest::auto_piece_length(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_sizes() {
        assert_eq!(parse_piece_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_piece_size("auto").unwrap(), 0);
        assert_eq!(parse_piece_size("16k").unwrap(), 16 << 10);
        assert_eq!(parse_piece_size("262144").unwrap(), 262144);
        assert!(parse_piece_size("3M").is_err());
        assert!(parse_piece_size("8K").is_err());
        assert!(parse_piece_size("128M").is_err());
        assert!(parse_piece_size("x").is_err());
    }

    #[test]
    fn auto_piece_sizes() {
        assert_eq!(auto_piece_size(30 << 20), 256 << 10);
        assert_eq!(auto_piece_size(1 << 30), 1 << 20);
        assert_eq!(auto_piece_size(100 << 30), 4 << 20);
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
