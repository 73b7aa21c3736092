//! `metalnet-controller validate` as a user meets it: files in, problems out, exit code.

use std::path::PathBuf;
use std::process::Command;

fn fixtures(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/tests/fixtures")
        .join(kind)
}

fn validate(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metalnet-controller"))
        .arg("validate")
        .arg(path)
        .output()
        .expect("run metalnet-controller");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn broken_pool_is_rejected_naming_object_field_and_reason() {
    let (code, out) = validate(&fixtures("invalid"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("pools.yaml#1: IPAddressPool/metallb-system/pool-a: spec.addresses[1]: \"192.0.2.20-192.0.2.10\": range end 192.0.2.10 is below its start 192.0.2.20"),
        "{out}"
    );
    assert!(
        out.contains("BGPPeer/metallb-system/bad-peer: spec.holdTime:"),
        "{out}"
    );
    assert!(
        out.contains("NetworkAttachmentDefinition/default/truncated: spec.config: not valid JSON"),
        "{out}"
    );
}

#[test]
fn valid_manifests_pass() {
    let (code, out) = validate(&fixtures("valid"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 error(s)"), "{out}");
}

#[test]
fn unreadable_yaml_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: [\n",
    )
    .unwrap();
    let (code, out) = validate(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("broken.yaml"), "{out}");
}
