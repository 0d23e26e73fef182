//! `blockswarm-docgen DIR`: writes DIR/man1/*.1 and DIR/{bash,zsh,fish}/ completions.

use anyhow::Context;
use clap::Parser;

/// Writes the man pages and shell completions of imager, seeder and receiver.
#[derive(Parser)]
#[command(name = "blockswarm-docgen", version, about)]
struct Args {
    /// Output directory (man1/, bash/, zsh/, fish/ are made in it).
    #[arg(env = "BLOCKSWARM_DOCGEN_OUT")]
    out: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let files = blockswarm_docgen::generate(&a.out)
        .with_context(|| format!("writing into {}", a.out.display()))?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
