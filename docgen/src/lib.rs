//! Man pages (clap_mangen) and bash/zsh/fish completions (clap_complete) for the three
//! programs, generated from the same clap definitions that parse their command lines.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The programs, each with its clap command.
pub fn commands() -> Vec<clap::Command> {
    vec![
        imager::Cli::command(),
        seeder::Cli::command(),
        receiver::Cli::command(),
    ]
}

/// Writes `man1/NAME.1`, `bash/NAME`, `zsh/_NAME` and `fish/NAME.fish` under `out`; returns
/// the files written.
pub fn generate(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for dir in ["man1", "bash", "zsh", "fish"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    for mut cmd in commands() {
        cmd.build();
        let name = cmd.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        let p = out.join("man1").join(format!("{name}.1"));
        std::fs::write(&p, page)?;
        written.push(p);
        for (shell, file) in [
            (Shell::Bash, format!("bash/{name}")),
            (Shell::Zsh, format!("zsh/_{name}")),
            (Shell::Fish, format!("fish/{name}.fish")),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut buf);
            let p = out.join(file);
            std::fs::write(&p, buf)?;
            written.push(p);
        }
    }
    Ok(written)
}
