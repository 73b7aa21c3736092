//! The CRDs checked in under deploy/crds/ match what the model generates, and would accept
//! upstream manifests (versions served, status subresources).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use metalnet::crd;

#[test]
fn checked_in_crds_are_current() {
    let dir = crd::checked_in_dir();
    let mut stale = Vec::new();
    let files = crd::files().expect("serialise CRDs");
    for (name, want) in &files {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(have) if &have == want => {}
            Ok(_) => stale.push(format!("{} differs", path.display())),
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    // No leftover files from kinds that no longer exist.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && !files.iter().any(|(n, _)| *n == name) {
                stale.push(format!(
                    "{} is not generated any more",
                    entry.path().display()
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "the checked-in CRDs are stale:\n  {}\nregenerate them with: {}",
        stale.join("\n  "),
        crd::REGENERATE_COMMAND
    );
}

#[test]
fn crds_serve_upstream_versions_with_status() {
    let crds = crd::crds();
    let find = |name: &str| {
        crds.iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no CRD {name}"))
    };
    for (name, version) in [
        ("ipaddresspools.metallb.io", "v1beta1"),
        ("l2advertisements.metallb.io", "v1beta1"),
        ("bgpadvertisements.metallb.io", "v1beta1"),
        ("communities.metallb.io", "v1beta1"),
        ("bgppeers.metallb.io", "v1beta2"),
        ("servicel2statuses.metallb.io", "v1beta1"),
        ("servicebgpstatuses.metallb.io", "v1beta1"),
    ] {
        let c = find(name);
        assert_eq!(c.spec.scope, "Namespaced", "{name}");
        let v = c
            .spec
            .versions
            .iter()
            .find(|v| v.name == version)
            .unwrap_or_else(|| panic!("{name} does not serve {version}"));
        assert!(v.served && v.storage, "{name} {version}");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name} has no status subresource"
        );
        let props = v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .expect("schema");
        assert!(props.contains_key("status"), "{name} has no status schema");
    }
    let peer = find("bgppeers.metallb.io");
    let old = peer
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1beta1")
        .unwrap();
    assert!(old.served && !old.storage && old.deprecated == Some(true));
    let nad = find("network-attachment-definitions.k8s.cni.cncf.io");
    assert_eq!(
        nad.spec.names.short_names,
        Some(vec!["net-attach-def".to_string()])
    );
    assert_eq!(nad.spec.versions[0].name, "v1");
}

#[test]
fn crd_yaml_reads_back() {
    let crds = crd::crds();
    for (name, yaml) in crd::files().unwrap() {
        let back: CustomResourceDefinition =
            serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = crds.iter().find(|c| crd::file_name(c) == name).unwrap();
        assert_eq!(&back, want, "{name} does not round-trip");
    }
}
