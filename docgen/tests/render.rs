//! Renders the man pages and completions and checks what an operator looks for in them:
//! every option, the exit codes, and bash completions that bash can parse.

use std::process::Command;

/// roff spells `-` as `\-`.
fn roff(s: &str) -> String {
    s.replace('-', "\\-")
}

#[test]
fn man_pages_name_every_option_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let files = blockswarm_docgen::generate(dir.path()).unwrap();
    assert_eq!(files.len(), 12, "{files:?}");
    for cmd in blockswarm_docgen::commands() {
        let name = cmd.get_name().to_string();
        let page =
            std::fs::read_to_string(dir.path().join("man1").join(format!("{name}.1"))).unwrap();
        assert!(page.starts_with(".ie"), "{name}.1 is not roff");
        let mut n = 0;
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(l) = a.get_long() {
                assert!(
                    page.contains(&roff(&format!("--{l}"))),
                    "{name}.1 lacks --{l}"
                );
                n += 1;
            }
        }
        assert!(n >= 8, "{name}: only {n} options");
        assert!(page.contains("Exit codes"), "{name}.1 lacks the exit codes");
        for (code, meaning) in blockswarm_manifest::exit::MEANINGS {
            let first = roff(meaning.split(':').next().unwrap());
            assert!(page.contains(&first), "{name}.1 lacks code {code}: {first}");
        }
        for (f, head) in [
            (format!("zsh/_{name}"), "#compdef"),
            (format!("fish/{name}.fish"), "complete -c"),
        ] {
            let t = std::fs::read_to_string(dir.path().join(&f)).unwrap();
            assert!(t.contains(head), "{f}");
        }
        let bash = dir.path().join("bash").join(&name);
        assert!(std::fs::read_to_string(&bash).unwrap().contains("--help"));
        let st = Command::new("bash").arg("-n").arg(&bash).status().unwrap();
        assert!(st.success(), "bash -n {}", bash.display());
    }
}
