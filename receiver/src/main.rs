use clap::Parser;

fn main() {
    let cli = receiver::Cli::parse();
    blockswarm_manifest::logging::init(cli.verbose);
    // Room for the connection caps (swarm::conn_limit) whatever limit we were started with.
    match blockswarm_swarm::conn_limit::raise_fd_limit() {
        Ok(n) => tracing::debug!(limit = ?n, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let rt = match blockswarm_swarm::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("receiver: error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(receiver::run(cli)) {
        eprintln!("receiver: error: {e}");
        std::process::exit(e.exit_code());
    }
}
