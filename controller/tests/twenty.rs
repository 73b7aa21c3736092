//! The "done when" scenario with the real binary: a state directory with two pools
//! and 20 LoadBalancer Services (requested addresses, sharing, dual-stack, one impossible),
//! `metalnet-controller --state-dir DIR --once`, every address as MetalLB would give it,
//! a second run changes nothing, and `explain` answers for each Service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use metalnet::state::{ClusterState, Kind, ObjectKey, ObjectRef, Source};

const BIN: &str = env!("CARGO_BIN_EXE_metalnet-controller");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/twenty")
}

/// Runs the binary with a bound on its run time.
fn controller(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .arg("--log-level")
        .arg("warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting metalnet-controller");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("waiting").is_some() {
            return child.wait_with_output().expect("collecting output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("metalnet-controller {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir/status/` (but the lock) with its contents.
fn status_files(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(p).expect("reading status/").flatten() {
            let path = e.path();
            // Locks record who runs, not what the cluster holds.
            if path.ends_with("locks") {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if path.file_name().is_some_and(|n| n != ".lock") {
                out.insert(path.clone(), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&dir.join("status"), &mut out);
    out
}

/// What MetalLB gives each Service (hand-computed; see the comments in the fixtures).
/// Requested addresses first; then the pool request; then automatic ones in
/// namespace/name order, lowest free address of `main` first, .0 avoided.
fn expected() -> Vec<(&'static str, &'static [&'static str], Option<&'static str>)> {
    vec![
        ("shop/api-fixed", &["192.0.2.10"], Some("main")),
        ("shop/legacy-fixed", &["192.0.2.11"], Some("main")),
        ("shop/reserved-fixed", &["198.51.100.3"], Some("reserved")),
        ("shop/dns-tcp", &["192.0.2.12"], Some("main")),
        ("shop/dns-udp", &["192.0.2.12"], Some("main")),
        ("shop/impossible", &[], None),
        ("shop/from-reserved", &["198.51.100.0"], Some("reserved")),
        ("apps/app-01", &["192.0.2.1"], Some("main")),
        ("apps/app-02", &["192.0.2.2"], Some("main")),
        ("apps/app-03", &["192.0.2.3"], Some("main")),
        ("apps/app-04", &["192.0.2.4"], Some("main")),
        ("apps/app-05", &["192.0.2.5"], Some("main")),
        ("apps/app-06", &["192.0.2.6"], Some("main")),
        ("apps/app-07", &["192.0.2.7"], Some("main")),
        ("apps/app-08", &["192.0.2.8"], Some("main")),
        ("apps/app-09", &["192.0.2.9"], Some("main")),
        ("apps/app-10", &["192.0.2.13"], Some("main")),
        ("shop/dual", &["192.0.2.14", "2001:db8::"], Some("main")),
        ("shop/web-http", &["192.0.2.15"], Some("main")),
        ("shop/web-https", &["192.0.2.15"], Some("main")),
    ]
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').expect("ns/name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_services_once_restart_and_explain() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for e in std::fs::read_dir(fixtures())
        .expect("the fixtures")
        .flatten()
    {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copying a fixture");
    }

    let out = controller(dir.path(), &["--once"]);
    assert!(
        out.status.success(),
        "--once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let state = ClusterState::start(Source::Dir(dir.path().into()), [Kind::Service])
        .await
        .expect("reading the state directory");
    let snap = state.snapshot();
    assert_eq!(snap.services.len(), 20);
    for (key, ips, pool) in expected() {
        let (ns, name) = split(key);
        let svc = &snap.services[&ObjectKey {
            namespace: Some(ns.into()),
            name: name.into(),
        }];
        let got: Vec<String> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        assert_eq!(got, ips, "{key}");
        let annotation = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("metallb.io/ip-allocated-from-pool"))
            .map(String::as_str);
        assert_eq!(annotation, pool, "{key}");
    }
    let impossible = ObjectRef::new(Kind::Service, Some("shop"), "impossible");
    let events = metalnet::state::dir::list_events(dir.path(), &impossible);
    assert!(
        events.iter().any(|e| e["reason"] == "AllocationFailed"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("192.0.2.10 is taken by shop/api-fixed"))),
        "{events:#?}"
    );
    drop(state);

    // A restart changes nothing: not one file under status/.
    let before = status_files(dir.path());
    let out = controller(dir.path(), &["--once"]);
    assert!(out.status.success());
    let after = status_files(dir.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, content) in &before {
        assert_eq!(&after[path], content, "{} changed", path.display());
    }

    // explain answers for each.
    for (key, ips, pool) in expected() {
        let out = controller(dir.path(), &["explain", key]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "explain {key}: {text}");
        match pool {
            Some(pool) => {
                let held = format!("has {} from pool \"{pool}\"", ips.join(","));
                assert!(text.contains(&held), "explain {key}:\n{text}");
            }
            None => {
                assert!(text.contains("has no address"), "{text}");
                assert!(text.contains("taken by shop/api-fixed"), "{text}");
                assert!(text.contains("AllocationFailed"), "{text}");
            }
        }
    }
    let out = controller(dir.path(), &["explain", "shop/nope"]);
    assert_eq!(out.status.code(), Some(1));
}
