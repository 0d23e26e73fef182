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

/// Every exit code with its one-line meaning, in order: the one table the programs' `--help`
/// and man pages list (blockswarm-cli's `exit_codes_help`).
pub const MEANINGS: &[(i32, &str)] = &[
    (OK, "Success: the job is done and verified"),
    (FAILURE, "Runtime failure (I/O error, internal error)"),
    (USAGE, "Bad command line or config file"),
    (
        BAD_INPUT,
        "Bad input: source not the filesystem said, truncated or unreadable; malformed or wrong manifest; nothing written",
    ),
    (
        BAD_TARGET,
        "Bad target: too small, mounted, the source itself, not a device or file; nothing written",
    ),
    (
        REFUSED,
        "Refused for safety: source mounted read-write, filesystem check failed, binary output to a terminal",
    ),
    (
        UNREACHABLE,
        "Seeder or manifest URL unreachable after --retry-for; nothing written",
    ),
    (
        VERIFY_FAILED,
        "Verification failed (--verify), or the download gave up (--stall-timeout)",
    ),
    (
        RECEIVERS_FAILED,
        "seeder --expect N: N receivers accounted for, some failed",
    ),
    (
        SOURCE_CHANGED,
        "seeder: a piece of the source does not match the manifest (source changed, wrong --source)",
    ),
];
