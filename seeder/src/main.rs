use clap::Parser;

fn main() {
    let cli = seeder::Cli::parse();
    blockswarm_manifest::logging::init(cli.verbose);
    // One thread does all the networking: cheaper than a thread pool when a machine runs many
    // peers (the bench runs 17 on 2 cores), and plenty for one LAN link. Disk reads, writes
    // and hashing run on tokio's blocking pool.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("seeder: error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(seeder::run(cli)) {
        eprintln!("seeder: error: {e}");
        std::process::exit(e.exit_code());
    }
}
