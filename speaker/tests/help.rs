//! `--help` works and explains every flag (a user's first contact with the binary).

use std::process::Command;

#[test]
fn help_exits_zero_and_describes_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_metalnet-speaker"))
        .arg("--help")
        .output()
        .expect("run metalnet-speaker --help");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage: metalnet-speaker"), "{text}");
    // In long help, clap prints each flag on its own line and its description on the next
    // lines, indented further; a flag without one is followed by the next flag or a blank.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("-") && line.len() - t.len() <= 4 {
            let next = lines.get(i + 1).copied().unwrap_or("");
            let described = !next.trim().is_empty() && !next.trim_start().starts_with('-');
            assert!(described, "flag without a description: {line}\n{text}");
        }
    }
}
