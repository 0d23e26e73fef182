use clap::Parser;

fn main() {
    let cli = imager::Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    if let Err(e) = imager::run(&cli) {
        // One line: some messages (partclone's log tail) span several.
        let msg = e.to_string();
        let lines: Vec<&str> = msg
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        eprintln!("imager: error: {}", lines.join(" | "));
        std::process::exit(e.exit_code());
    }
}
