//! Command-line pieces shared by `imager`, `seeder` and `receiver`: one size parser and one
//! duration parser (on bytesize and humantime), the progress output mode and its plain/JSON
//! lines for a serial console or a log file, and the exit-code table for `--help`.
#![forbid(unsafe_code)]

pub mod exit_help;
pub mod parse;
pub mod progress;

pub use exit_help::exit_codes_help;
pub use parse::{parse_duration, parse_size};
pub use progress::{LineClock, LinePrinter, Output, ProgressMode, RateMeter, Snapshot};
