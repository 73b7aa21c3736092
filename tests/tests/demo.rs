//! The README's demo command, as a new user meets it: the site comes up on the embedded
//! default, the components run, the checks pass, and everything is torn down.

use std::path::PathBuf;
use std::process::Command;

/// Builds the workspace binaries the demo starts (a no-op when they are current), so the test
/// also works under `cargo test -p metalnet-lab`.
fn build_bins() {
    for name in [
        "metalnet-controller",
        "metalnet-speaker",
        "metalnet-vxlan",
        "metalnet-router",
    ] {
        metalnet_lab::bins::binary(name).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn demo_comes_up_assigns_an_address_and_tears_down() {
    build_bins();
    let state = tempfile::tempdir().unwrap();
    let lab_bin = PathBuf::from(env!("CARGO_BIN_EXE_metalnet-lab"));
    let out = Command::new("timeout")
        .arg("120")
        .arg(&lab_bin)
        .args(["demo", "--check", "--state-dir"])
        .arg(state.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run metalnet-lab demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("Service demo/web got 192.0.2.200"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pods: pod1 203.0.113.2 / 2001:db8:100:1::2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("192.0.2.200: layer 2 from node"),
        "{stdout}"
    );
    assert!(stdout.contains("BGP from all three nodes"), "{stdout}");
    // The service proxy: the remote client's HTTP requests reach the pods, named in the answers.
    assert!(
        stdout.contains("http://192.0.2.200/ from the remote client goes by BGP to node"),
        "{stdout}"
    );
    assert!(stdout.contains("requests answered by pod"), "{stdout}");
    assert!(
        stdout.contains("http://[2001:db8:0:1::200]/ from the remote client goes by BGP to node"),
        "{stdout}"
    );
    assert!(
        stdout.contains("balanced connections counted by the proxies: node"),
        "{stdout}"
    );
    assert!(
        stdout.contains("reached 192.0.2.200 again after"),
        "{stdout}"
    );
    assert!(stdout.contains("demo check passed"), "{stdout}");
    // The lab's namespaces are gone (the prefix is printed in the teardown line).
    let prefix = stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo check passed, tearing down lab "))
        .expect("teardown line")
        .trim()
        .to_string();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&netns.stdout);
    assert!(!left.contains(&prefix), "namespaces left behind: {left}");
}
