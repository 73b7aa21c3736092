//! `--help` works and explains every flag (a user's first contact with the binary).

#[test]
fn help_exits_zero_and_describes_every_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_metalnet-controller"))
        .arg("--help")
        .output()
        .expect("run metalnet-controller --help");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage: metalnet-controller"), "{text}");
    let bare = metalnet::daemon::undescribed_flags(&text);
    assert!(
        bare.is_empty(),
        "flags without a description: {bare:?}\n{text}"
    );
}
