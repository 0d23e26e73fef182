//! Process exit codes shared by `imager`, `seeder` and `receiver` (documented in the README).

/// Success: the job is done and verified.
pub const OK: i32 = 0;
/// A runtime failure not covered below (I/O error while reading or writing, internal error).
pub const FAILURE: i32 = 1;
/// Bad command line (clap also exits with 2).
pub const USAGE: i32 = 2;
/// Bad input: the source is not the filesystem it was said to be, is truncated or unreadable,
/// or a manifest is malformed. Nothing was written.
pub const BAD_INPUT: i32 = 3;
/// Bad target: too small, mounted, the source itself, or not a device/file. Nothing was written.
pub const BAD_TARGET: i32 = 4;
/// Refused for safety: a mounted read-write source without `--force`, binary output to a
/// terminal.
pub const REFUSED: i32 = 5;
/// Network: the seeder/manifest URL could not be reached after retries. Nothing was written.
pub const UNREACHABLE: i32 = 6;
/// The data on the target did not verify (receiver `--verify`), or the download gave up: no
/// piece verified for `--stall-timeout` while no peer sent a missing one.
pub const VERIFY_FAILED: i32 = 7;
/// `seeder --expect N`: N receivers are accounted for but some of them failed (each reported
/// its exit code and error to the seeder; the summary line names them).
pub const RECEIVERS_FAILED: i32 = 8;
/// The seeder stopped: a piece read from its source did not match the manifest's SHA-1 when
/// first served (the source changed since imaging, or a wrong `--source`/`--image`).
pub const SOURCE_CHANGED: i32 = 9;
