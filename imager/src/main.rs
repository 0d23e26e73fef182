use clap::Parser;

fn main() {
    let cli = imager::Cli::parse();
    blockswarm_manifest::logging::init(cli.verbose);
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
