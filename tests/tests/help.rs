//! Every binary's `--help` works and explains every flag (a user's first contact with it),
//! and so does the `--help` of each of its subcommands.

use std::path::Path;
use std::process::Command;

use metalnet::daemon::undescribed_flags;
use metalnet_lab::bins;

/// Every binary the workspace ships.
const BINARIES: [&str; 5] = [
    "metalnet-controller",
    "metalnet-speaker",
    "metalnet-vxlan",
    "metalnet-router",
    "multus-shim",
];

/// `BIN ARGS… --help`: its standard output, or what went wrong.
fn help(bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .map_err(|e| format!("running {} {args:?} --help: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {args:?} --help exited with {}: {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The subcommands clap lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty() || l.starts_with("  "))
        .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// What is wrong with one help text: no usage line naming `usage`, or flags left bare.
fn problems(usage: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !text.contains(&format!("Usage: {usage}")) {
        out.push(format!("`{usage} --help` lacks `Usage: {usage}`:\n{text}"));
    }
    let bare = undescribed_flags(text);
    if !bare.is_empty() {
        out.push(format!(
            "`{usage} --help`: flags without a description: {bare:?}\n{text}"
        ));
    }
    out
}

#[test]
fn every_binary_and_subcommand_explains_every_flag() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for name in BINARIES {
        let bin = match bins::binary(name) {
            Ok(p) => p,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let top = match help(&bin, &[]) {
            Ok(t) => t,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        failures.extend(problems(name, &top));
        checked += 1;
        for sub in subcommands(&top) {
            match help(&bin, &[&sub]) {
                Ok(t) => failures.extend(problems(&format!("{name} {sub}"), &t)),
                Err(e) => failures.push(e),
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked >= BINARIES.len());
}

#[test]
fn subcommands_are_read_from_the_commands_section() {
    let text = "Usage: x [OPTIONS] [COMMAND]\n\nCommands:\n  explain   Why an address is where it is\n  validate  Check manifests\n            over two lines\n  help      Print this message\n\nOptions:\n  -h, --help\n          Print help\n";
    assert_eq!(subcommands(text), ["explain", "validate"]);
}
