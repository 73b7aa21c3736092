//! The state-directory backend, tested through `ClusterState`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use metalnet::state::dir::list_events;
use metalnet::state::{
    ClusterState, EventRecord, EventType, Kind, MetadataPatch, ObjectRef, Snapshot, Source,
    Subscription, Update,
};
use metalnet::testing::{Manifest, pool};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

async fn start(dir: &Path) -> ClusterState {
    tokio::time::timeout(
        WAIT,
        ClusterState::start(Source::Dir(dir.to_path_buf()), Kind::ALL),
    )
    .await
    .expect("start timed out")
    .expect("start failed")
}

async fn next(sub: &mut Subscription) -> Update {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("no update within 5 s")
}

/// Polls the snapshot until `cond` holds (at most 5 s).
async fn wait_for(state: &ClusterState, what: &str, cond: impl Fn(&Snapshot) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond(&state.snapshot()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes like an editor does: a temporary file, then a rename.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn svc(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::Service, Some("default"), name)
}

fn pool_ref(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::IPAddressPool, Some("metallb-system"), name)
}

fn key(name: &str, ns: &str) -> metalnet::state::ObjectKey {
    ObjectRef::new(Kind::Service, Some(ns), name).key()
}

const SERVICE_WEB: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    owner: team-a
spec:
  type: LoadBalancer
  ports:
  - port: 80
";

fn changed(refs: &[&ObjectRef]) -> BTreeSet<ObjectRef> {
    refs.iter().map(|r| (*r).clone()).collect()
}

#[tokio::test]
async fn initial_load_and_file_changes_reach_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), SERVICE_WEB).unwrap();
    std::fs::write(
        dir.path().join("pools.yaml"),
        pool("a", ["192.0.2.0/28"]).yaml(),
    )
    .unwrap();
    let state = start(dir.path()).await;
    let snap = state.snapshot();
    assert!(snap.services.contains_key(&key("web", "default")));
    assert_eq!(snap.ip_address_pools.len(), 1);
    assert!(dir.path().join("status").is_dir());

    let mut sub = state.subscribe();
    let first = next(&mut sub).await;
    assert_eq!(first.changed, changed(&[&svc("web"), &pool_ref("a")]));

    // Added (in a directory created after start).
    std::fs::create_dir(dir.path().join("more")).unwrap();
    write_atomic(
        &dir.path().join("more/b.yaml"),
        &pool("b", ["198.51.100.0/28"]).yaml(),
    );
    let u = next(&mut sub).await;
    assert_eq!(u.changed, changed(&[&pool_ref("b")]));
    assert!(u.snapshot.ip_address_pools.len() == 2);

    // Modified in place.
    std::fs::write(
        dir.path().join("pools.yaml"),
        pool("a", ["203.0.113.0/28"]).yaml(),
    )
    .unwrap();
    let u = next(&mut sub).await;
    assert_eq!(u.changed, changed(&[&pool_ref("a")]));
    let a = &u.snapshot.ip_address_pools[&pool_ref("a").key()];
    assert_eq!(a.spec.addresses, ["203.0.113.0/28"]);

    // Deleted.
    std::fs::remove_file(dir.path().join("more/b.yaml")).unwrap();
    let u = next(&mut sub).await;
    assert_eq!(u.changed, changed(&[&pool_ref("b")]));
    assert_eq!(u.snapshot.ip_address_pools.len(), 1);

    // Renamed in from an ignored name (editor temp file), then a backup file that is ignored.
    std::fs::write(
        dir.path().join("c.yaml~"),
        pool("c", ["192.0.2.64/28"]).yaml(),
    )
    .unwrap();
    std::fs::rename(dir.path().join("c.yaml~"), dir.path().join("c.yaml")).unwrap();
    let u = next(&mut sub).await;
    assert_eq!(u.changed, changed(&[&pool_ref("c")]));
}

#[tokio::test]
async fn a_broken_edit_keeps_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pools.yaml");
    std::fs::write(&file, pool("a", ["192.0.2.0/28"]).yaml()).unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: [\n",
    )
    .unwrap();
    let state = start(dir.path()).await;
    assert_eq!(state.snapshot().ip_address_pools.len(), 1);
    assert!(state.snapshot().nodes.is_empty());
    let mut sub = state.subscribe();
    next(&mut sub).await;

    write_atomic(
        &file,
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: [",
    );
    // Then a real change elsewhere, to know the broken file has been read by now.
    write_atomic(
        &dir.path().join("node.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
    );
    let u = next(&mut sub).await;
    assert_eq!(
        u.changed,
        changed(&[&ObjectRef::new(Kind::Node, None, "n1")])
    );
    assert!(
        u.snapshot
            .ip_address_pools
            .contains_key(&pool_ref("a").key())
    );
}

#[tokio::test]
async fn patch_status_is_merged_persists_and_leaves_the_user_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, SERVICE_WEB).unwrap();
    let state = start(dir.path()).await;
    let status = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    state.patch_status(&svc("web"), status).await.unwrap();
    let mut meta = MetadataPatch::default();
    meta.annotations
        .insert("metallb.io/ip-allocated-from-pool".into(), Some("a".into()));
    meta.annotations.insert("owner".into(), None);
    state.patch_metadata(&svc("web"), &meta).await.unwrap();

    // Visible as soon as the calls return.
    let check = |snap: &Snapshot| {
        let web = &snap.services[&key("web", "default")];
        let ingress = web.status.as_ref().unwrap().load_balancer.as_ref().unwrap();
        assert_eq!(
            ingress.ingress.as_ref().unwrap()[0].ip.as_deref(),
            Some("192.0.2.1")
        );
        let ann = web.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann["metallb.io/ip-allocated-from-pool"], "a");
        assert!(!ann.contains_key("owner"), "{ann:?}");
        assert_eq!(
            web.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            80
        );
    };
    check(&state.snapshot());
    drop(state);

    assert_eq!(std::fs::read_to_string(&file).unwrap(), SERVICE_WEB);
    assert!(
        dir.path()
            .join("status/patches/Service/default/web.yaml")
            .is_file()
    );
    let again = start(dir.path()).await;
    check(&again.snapshot());

    // Not found, like a 404.
    let err = again
        .patch_status(&svc("nope"), json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Service/default/nope") && err.contains("not found"),
        "{err}"
    );
}

#[tokio::test]
async fn two_states_on_one_directory_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), SERVICE_WEB).unwrap();
    let one = start(dir.path()).await;
    let two = start(dir.path()).await;

    let mut meta = MetadataPatch::default();
    meta.labels.insert("from".into(), Some("one".into()));
    one.patch_metadata(&svc("web"), &meta).await.unwrap();
    let mut meta = MetadataPatch::default();
    meta.annotations.insert("from".into(), Some("two".into()));
    two.patch_metadata(&svc("web"), &meta).await.unwrap();

    let both = |s: &Snapshot| {
        let m = &s.services[&key("web", "default")].metadata;
        m.labels
            .as_ref()
            .is_some_and(|l| l.get("from").map(String::as_str) == Some("one"))
            && m.annotations
                .as_ref()
                .is_some_and(|a| a.get("from").map(String::as_str) == Some("two"))
    };
    wait_for(&one, "two's annotation in one", both).await;
    wait_for(&two, "one's label in two", both).await;

    let l2 = ObjectRef::new(Kind::ServiceL2Status, Some("metallb-system"), "l2-web");
    two.apply(
        &l2,
        json!({"spec": {}, "status": {"node": "node-1", "serviceName": "web", "serviceNamespace": "default"}}),
    )
    .await
    .unwrap();
    wait_for(&one, "two's ServiceL2Status in one", |s| {
        s.service_l2_statuses
            .get(&l2.key())
            .is_some_and(|o| o.status.as_ref().is_some_and(|st| st.node == "node-1"))
    })
    .await;
}

#[tokio::test]
async fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), SERVICE_WEB).unwrap();
    let one = std::sync::Arc::new(start(dir.path()).await);
    let two = std::sync::Arc::new(start(dir.path()).await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        for (who, state) in [("one", &one), ("two", &two)] {
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                let mut meta = MetadataPatch::default();
                meta.labels.insert(format!("{who}-{i}"), Some("x".into()));
                state.patch_metadata(&svc("web"), &meta).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let all = |s: &Snapshot| {
        s.services[&key("web", "default")]
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.len() == 40)
    };
    wait_for(&one, "all 40 labels in one", all).await;
    wait_for(&two, "all 40 labels in two", all).await;
}

#[tokio::test]
async fn owned_objects_are_applied_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), SERVICE_WEB).unwrap();
    let state = start(dir.path()).await;
    let l2 = ObjectRef::new(Kind::ServiceL2Status, Some("metallb-system"), "l2-web");
    let value = json!({
        "apiVersion": "metallb.io/v1beta1",
        "kind": "ServiceL2Status",
        "metadata": {"name": "l2-web", "namespace": "metallb-system"},
        "spec": {},
        "status": {"node": "node-1", "serviceName": "web", "serviceNamespace": "default"}
    });
    state.apply(&l2, value).await.unwrap();
    let snap = state.snapshot();
    assert_eq!(
        snap.service_l2_statuses[&l2.key()]
            .status
            .as_ref()
            .unwrap()
            .node,
        "node-1"
    );
    assert!(
        dir.path()
            .join("status/objects/ServiceL2Status/metallb-system/l2-web.yaml")
            .is_file()
    );

    // Status patches land in the owned object itself.
    state
        .patch_status(&l2, json!({"node": "node-2"}))
        .await
        .unwrap();
    let st = state.snapshot().service_l2_statuses[&l2.key()]
        .status
        .clone()
        .unwrap();
    assert_eq!(
        (st.node.as_str(), st.service_name.as_str()),
        ("node-2", "web")
    );

    state.delete(&l2).await.unwrap();
    assert!(state.snapshot().service_l2_statuses.is_empty());
    state.delete(&l2).await.unwrap(); // gone already: fine

    let err = state.delete(&svc("web")).await.unwrap_err().to_string();
    assert!(
        err.contains("not owned by metalnet") && err.contains("web.yaml"),
        "{err}"
    );
    let err = state
        .apply(&svc("web"), json!({"spec": {}}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not owned by metalnet"), "{err}");
    assert!(
        state
            .snapshot()
            .services
            .contains_key(&key("web", "default"))
    );
}

#[tokio::test]
async fn repeated_events_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), SERVICE_WEB).unwrap();
    let state = start(dir.path()).await;
    let mut sub = state.subscribe();
    next(&mut sub).await;
    let event = EventRecord {
        type_: EventType::Normal,
        reason: "IPAllocated".into(),
        message: "Assigned IP [\"192.0.2.1\"]".into(),
        reporter: "metalnet-controller".into(),
    };
    state.record_event(&svc("web"), &event).await.unwrap();
    state.record_event(&svc("web"), &event).await.unwrap();
    let other = EventRecord {
        type_: EventType::Warning,
        reason: "AllocationFailed".into(),
        message: "no available IPs".into(),
        ..event.clone()
    };
    state.record_event(&svc("web"), &other).await.unwrap();

    let events = list_events(dir.path(), &svc("web"));
    assert_eq!(events.len(), 2, "{events:?}");
    let allocated = events
        .iter()
        .find(|e| e["reason"] == "IPAllocated")
        .unwrap();
    assert_eq!(allocated["count"], 2);
    assert_eq!(allocated["type"], "Normal");
    assert_eq!(allocated["involvedObject"]["kind"], "Service");
    assert_eq!(allocated["source"]["component"], "metalnet-controller");
    assert_eq!(allocated["message"], "Assigned IP [\"192.0.2.1\"]");
    assert!(list_events(dir.path(), &svc("other")).is_empty());

    // Events do not wake subscribers (a component recording one must not re-run for it).
    let quiet = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(
        quiet.is_err(),
        "unexpected update: {:?}",
        quiet.map(|u| u.changed)
    );
}

#[tokio::test]
async fn an_invalid_pool_is_reported_and_the_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pools.yaml"),
        pool("good", ["192.0.2.0/28"]).document()
            + &pool("bad", [""; 0]).spec("addresses", json!(5)).document(),
    )
    .unwrap();
    let state = start(dir.path()).await;
    let snap = state.snapshot();
    assert!(snap.ip_address_pools.contains_key(&pool_ref("good").key()));
    assert!(!snap.ip_address_pools.contains_key(&pool_ref("bad").key()));
    let why = &snap.invalid[&pool_ref("bad")];
    assert!(why.contains("sequence") || why.contains("5"), "{why}");
}

/// A deleted object's patch (its status) goes with it, as the API server's does, once the
/// object has stayed gone for a second: a Service created again under that name is a new
/// Service and claims no address. Within that second it applies again (a file moved away
/// and back). So is a patch left while no process ran, a second after a process starts.
#[tokio::test]
async fn a_patch_without_its_object_is_removed_once_the_object_stays_gone() {
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("status/patches/Service/default/gone.yaml");
    std::fs::create_dir_all(patch.parent().unwrap()).unwrap();
    let write_patch = || {
        std::fs::write(
            &patch,
            "status:\n  loadBalancer:\n    ingress: [{ip: 192.0.2.9}]\n",
        )
        .unwrap()
    };
    let has_status = |s: &Snapshot| {
        s.services.get(&key("gone", "default")).is_some_and(|svc| {
            svc.status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|i| i[0].ip.as_deref() == Some("192.0.2.9"))
        })
    };
    let manifest = dir.path().join("gone.yaml");
    let service = SERVICE_WEB.replace("name: web", "name: gone");

    // Left behind while no process ran: removed a second after the start.
    write_patch();
    let state = start(dir.path()).await;
    assert!(
        patch.exists(),
        "not at once: the object may be on its way back"
    );
    state.remove_deleted_objects_status().await.unwrap();
    assert!(!patch.exists(), "a patch left while no process ran");
    drop(state);

    // Gone for a moment: back within the second, its patch applies again.
    write_patch();
    write_atomic(&manifest, &service);
    let state = start(dir.path()).await;
    assert!(has_status(&state.snapshot()));
    std::fs::remove_file(&manifest).unwrap();
    wait_for(&state, "the service to go", |s| s.services.is_empty()).await;
    write_atomic(&manifest, &service);
    wait_for(&state, "the returning service", has_status).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(patch.is_file(), "the object is back: its patch stays");

    // Deleted for good: the patch goes after a second, and a Service of that name created
    // again has no status.
    std::fs::remove_file(&manifest).unwrap();
    wait_for(&state, "the service to go", |s| s.services.is_empty()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while patch.exists() {
        assert!(std::time::Instant::now() < deadline, "the patch stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write_atomic(&manifest, &service);
    wait_for(&state, "the new service", |s| {
        s.services.contains_key(&key("gone", "default"))
    })
    .await;
    assert!(!has_status(&state.snapshot()));
}

#[tokio::test]
async fn a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = ClusterState::start(Source::Dir(missing.clone()), Kind::ALL)
        .await
        .err()
        .expect("start must fail")
        .to_string();
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");
}

#[tokio::test]
async fn writes_racing_edits_and_other_writers_end_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, SERVICE_WEB).unwrap();
    let one = start(dir.path()).await;
    let two = start(dir.path()).await;

    // You edit the Service just before a status patch: both end up in effect.
    let edited = SERVICE_WEB.replace("port: 80", "port: 8080");
    write_atomic(&file, &edited);
    let status = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    one.patch_status(&svc("web"), status).await.unwrap();
    let both = |s: &Snapshot| {
        s.services.get(&key("web", "default")).is_some_and(|web| {
            web.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port == 8080
                && web
                    .status
                    .as_ref()
                    .and_then(|st| st.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .is_some_and(|i| i[0].ip.as_deref() == Some("192.0.2.1"))
        })
    };
    wait_for(&one, "the edit and the status in one", both).await;
    wait_for(&two, "the edit and the status in two", both).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), edited);

    // A Service added just now is patched at once (found even before the watcher reports it).
    write_atomic(
        &dir.path().join("new.yaml"),
        &SERVICE_WEB.replace("name: web", "name: new"),
    );
    one.patch_status(&svc("new"), json!({"loadBalancer": {}}))
        .await
        .unwrap();
    assert!(one.snapshot().services.contains_key(&key("new", "default")));

    // Another process creates an object, and this one patches it before its watcher runs.
    let l2 = ObjectRef::new(Kind::ServiceL2Status, Some("metallb-system"), "l2-web");
    two.apply(
        &l2,
        json!({"spec": {}, "status": {"node": "node-1", "serviceName": "web", "serviceNamespace": "default"}}),
    )
    .await
    .unwrap();
    one.patch_status(&l2, json!({"node": "node-2"}))
        .await
        .unwrap();
    let patched = |s: &Snapshot| {
        s.service_l2_statuses.get(&l2.key()).is_some_and(|o| {
            o.status
                .as_ref()
                .is_some_and(|st| st.node == "node-2" && st.service_name == "web")
        })
    };
    assert!(patched(&one.snapshot()));
    wait_for(&two, "one's patch of two's object in two", patched).await;

    // And deletes it: gone in both.
    one.delete(&l2).await.unwrap();
    assert!(one.snapshot().service_l2_statuses.is_empty());
    wait_for(&two, "the deletion in two", |s| {
        s.service_l2_statuses.is_empty()
    })
    .await;
}

fn services_yaml(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| SERVICE_WEB.replace("name: web", &format!("name: {n}")))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Samples the snapshot every 2 ms while `during` runs, and fails if any sample lacks one of
/// `names` (or holds a Service not among them).
async fn services_stay<F: std::future::Future<Output = ()>>(
    state: &ClusterState,
    names: &[&str],
    during: F,
) {
    let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    let seen =
        |s: &Snapshot| -> BTreeSet<String> { s.services.keys().map(|k| k.name.clone()).collect() };
    let sampler = async {
        loop {
            let got = seen(&state.snapshot());
            assert_eq!(
                got, want,
                "the Services changed while their file was written"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        () = during => {}
        () = sampler => unreachable!(),
    }
    // And after the writer is done, once the backend has had time to look.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(seen(&state.snapshot()), want);
}

/// Writes `text` in place (no rename) in two halves, `pause` apart, as a shell redirect or an
/// editor that does not rename would; the first half ends inside a Service's name.
async fn write_in_place_slowly(path: &Path, text: &str, pause: Duration) {
    use std::io::Write;
    let cut = text.find("name: s-4").expect("a name to cut") + "name: s-".len();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&text.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    tokio::time::sleep(pause).await;
    f.write_all(&text.as_bytes()[cut..]).unwrap();
    drop(f);
}

const EIGHT: [&str; 8] = ["s-1", "s-2", "s-3", "s-4", "s-5", "s-6", "s-7", "s-8"];

#[tokio::test]
async fn a_file_being_written_in_place_keeps_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yaml");
    let text = services_yaml(&EIGHT);
    std::fs::write(&file, &text).unwrap();
    let state = start(dir.path()).await;
    assert_eq!(state.snapshot().services.len(), 8);
    for pause in [50, 100, 150] {
        services_stay(
            &state,
            &EIGHT,
            write_in_place_slowly(&file, &text, Duration::from_millis(pause)),
        )
        .await;
    }
}

#[tokio::test]
async fn a_file_truncated_for_a_moment_keeps_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yaml");
    let text = services_yaml(&EIGHT);
    std::fs::write(&file, &text).unwrap();
    let state = start(dir.path()).await;
    for pause in [50, 100, 300] {
        let truncate_then_write = async {
            // `: > services.yaml`, then the content a moment later.
            std::fs::File::create(&file).unwrap();
            tokio::time::sleep(Duration::from_millis(pause)).await;
            std::fs::write(&file, &text).unwrap();
        };
        services_stay(&state, &EIGHT, truncate_then_write).await;
    }
    // A broken document for a moment, too.
    let broken = async {
        std::fs::write(&file, text.replace("kind: Service", "kind: [Service")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&file, &text).unwrap();
    };
    services_stay(&state, &EIGHT, broken).await;
}

#[tokio::test]
async fn deletions_that_are_meant_still_delete() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yaml");
    std::fs::write(&file, services_yaml(&EIGHT)).unwrap();
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, services_yaml(&["o-1"])).unwrap();
    let state = start(dir.path()).await;
    assert_eq!(state.snapshot().services.len(), 9);

    // Objects removed from a file that parses: gone.
    std::fs::write(&file, services_yaml(&EIGHT[..3])).unwrap();
    wait_for(&state, "5 Services removed from their file", |s| {
        s.services.len() == 4
    })
    .await;
    // A file deleted: its objects are gone.
    std::fs::remove_file(&other).unwrap();
    wait_for(&state, "the deleted file's Service gone", |s| {
        s.services.len() == 3
    })
    .await;
    // A file that stays empty: its objects go after a grace period.
    std::fs::write(&file, "# nothing here now\n").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        state.snapshot().services.len(),
        3,
        "emptied file applied at once"
    );
    wait_for(&state, "the emptied file's Services gone", |s| {
        s.services.is_empty()
    })
    .await;
}

/// A process starting while a manifest is empty (emptied just before) or broken uses the last
/// good version an earlier process kept, as a running process keeps its previous version; a
/// manifest emptied long before the start, or deleted, loses its objects.
#[tokio::test]
async fn a_process_starting_while_a_manifest_is_being_rewritten_uses_its_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yaml");
    let text = services_yaml(&EIGHT);
    std::fs::write(&file, &text).unwrap();
    drop(start(dir.path()).await);

    // Truncated just before the start: the eight stay, and go once it stays empty.
    std::fs::File::create(&file).unwrap();
    let state = start(dir.path()).await;
    assert_eq!(
        state.snapshot().services.len(),
        8,
        "emptied just before start"
    );
    wait_for(&state, "the emptied file's Services gone", |s| {
        s.services.is_empty()
    })
    .await;
    drop(state);

    // Once deleted for good, nothing of it comes back at the next start.
    std::fs::write(&file, "").unwrap();
    age(&file, 60);
    let state = start(dir.path()).await;
    assert!(state.snapshot().services.is_empty(), "emptied long ago");
    drop(state);

    // Broken while no process ran (an edit gone wrong): the last good version stays in force
    // until it parses again.
    std::fs::write(&file, &text).unwrap();
    drop(start(dir.path()).await);
    std::fs::write(&file, text.replace("kind: Service", "kind: [Service")).unwrap();
    age(&file, 60);
    let state = start(dir.path()).await;
    assert_eq!(state.snapshot().services.len(), 8, "broken at start");
    write_atomic(&file, &services_yaml(&EIGHT[..2]));
    wait_for(&state, "the fixed file", |s| s.services.len() == 2).await;
    drop(state);

    // Emptied long before the start: deleted.
    std::fs::write(&file, "# nothing\n").unwrap();
    age(&file, 60);
    let state = start(dir.path()).await;
    assert!(state.snapshot().services.is_empty(), "emptied long ago");
    drop(state);

    // A file deleted while no process ran leaves no copy behind.
    std::fs::write(&file, &text).unwrap();
    drop(start(dir.path()).await);
    std::fs::remove_file(&file).unwrap();
    drop(start(dir.path()).await);
    std::fs::File::create(&file).unwrap();
    let state = start(dir.path()).await;
    assert!(
        state.snapshot().services.is_empty(),
        "a deleted file's last good version is gone"
    );
}

fn port_of(s: &Snapshot, name: &str) -> Option<i32> {
    let svc = s.services.get(&key(name, "default"))?;
    Some(svc.spec.as_ref()?.ports.as_ref()?[0].port)
}

/// Sets a file's modification time `secs_ago` seconds in the past.
fn age(path: &Path, secs_ago: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs_ago);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[tokio::test]
async fn a_duplicate_never_replaces_the_object_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("web.yaml");
    std::fs::write(&original, SERVICE_WEB).unwrap();
    let state = start(dir.path()).await;
    assert_eq!(port_of(&state.snapshot(), "web"), Some(80));

    // A scratch copy in a file that sorts first.
    let scratch = dir.path().join("0-scratch.yaml");
    write_atomic(&scratch, &SERVICE_WEB.replace("port: 80", "port: 9999"));
    // A change after it, to know the scratch file has been read.
    write_atomic(
        &dir.path().join("node.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
    );
    wait_for(&state, "the node", |s| !s.nodes.is_empty()).await;
    assert_eq!(port_of(&state.snapshot(), "web"), Some(80));
    // Editing the original keeps it in force.
    write_atomic(&original, &SERVICE_WEB.replace("port: 80", "port: 81"));
    wait_for(&state, "the edit of the original", |s| {
        port_of(s, "web") == Some(81)
    })
    .await;

    // validate DIR reports the duplicate with both files, the older one in force.
    age(&original, 60);
    let (objects, errors) = metalnet::manifest::load_paths(&[dir.path().to_path_buf()]);
    let web = objects.iter().find(|o| o.obj == svc("web")).unwrap();
    assert_eq!(web.source.path, original);
    let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("0-scratch.yaml#1") && errors[0].contains("web.yaml#1"),
        "{errors:?}"
    );

    // The duplicate is a Warning Event on the Service, naming both files.
    let duplicate_events = || {
        metalnet::state::dir::list_events(dir.path(), &svc("web"))
            .into_iter()
            .filter(|e| e["reason"] == "DuplicateObject")
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while duplicate_events().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = duplicate_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Warning");
    let message = events[0]["message"].as_str().unwrap();
    assert!(
        message.contains("0-scratch.yaml") && message.contains("web.yaml"),
        "{message}"
    );

    // At a restart, the older file's definition is in force.
    drop(state);
    let again = start(dir.path()).await;
    assert_eq!(port_of(&again.snapshot(), "web"), Some(81));
    // A second process finding the same duplicate leaves the Event as it is.
    let second = start(dir.path()).await;
    let events = duplicate_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["count"], 1, "{events:?}");
    drop(second);

    // The original deleted: the copy takes over.
    std::fs::remove_file(&original).unwrap();
    wait_for(&again, "the copy in force", |s| {
        port_of(s, "web") == Some(9999)
    })
    .await;
}

#[tokio::test]
async fn validate_reads_the_users_manifests_not_metalnets_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), SERVICE_WEB).unwrap();
    let state = start(dir.path()).await;
    let status = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    state.patch_status(&svc("web"), status).await.unwrap();
    let l2 = ObjectRef::new(Kind::ServiceL2Status, Some("metallb-system"), "l2-web");
    state
        .apply(&l2, json!({"spec": {}, "status": {"node": "n", "serviceName": "web", "serviceNamespace": "default"}}))
        .await
        .unwrap();
    let event = EventRecord {
        type_: EventType::Normal,
        reason: "IPAllocated".into(),
        message: "m".into(),
        reporter: "test".into(),
    };
    state.record_event(&svc("web"), &event).await.unwrap();
    let (objects, errors) = metalnet::manifest::load_paths(&[dir.path().to_path_buf()]);
    let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let refs: Vec<ObjectRef> = objects.into_iter().map(|o| o.obj).collect();
    assert_eq!(refs, [svc("web")]);
}

/// Waits until the backend's view of the directory is `want`.
async fn attached_is(state: &ClusterState, want: bool) {
    let mut rx = state.attached();
    tokio::time::timeout(WAIT, rx.wait_for(|a| *a == want))
        .await
        .unwrap_or_else(|_| panic!("attached never became {want}"))
        .unwrap();
}

#[tokio::test]
async fn a_replaced_directory_is_watched_again_and_its_absence_deletes_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("services.yaml"), services_yaml(&EIGHT)).unwrap();
    let state = start(&dir).await;
    assert!(*state.attached().borrow());
    let status = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    state.patch_status(&svc("s-1"), status).await.unwrap();

    let s1_ip = |s: &Snapshot| {
        s.services[&key("s-1", "default")]
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| i[0].ip.clone())
    };
    // Deleted: the last state stays in force (status included), and the backend says it is
    // blind.
    let deleted = async {
        std::fs::remove_dir_all(&dir).unwrap();
        attached_is(&state, false).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    services_stay(&state, &EIGHT, deleted).await;
    assert!(!*state.attached().borrow());
    assert_eq!(s1_ip(&state.snapshot()).as_deref(), Some("192.0.2.1"));

    // Re-created (copied back in, then renamed into place): watched again.
    let copy = parent.path().join("state.new");
    std::fs::create_dir(&copy).unwrap();
    std::fs::write(copy.join("services.yaml"), services_yaml(&EIGHT)).unwrap();
    std::fs::rename(&copy, &dir).unwrap();
    attached_is(&state, true).await;
    std::fs::write(dir.join("more.yaml"), services_yaml(&["s-9"])).unwrap();
    wait_for(&state, "a Service added to the new directory", |s| {
        s.services.len() == 9
    })
    .await;
    // Writes work again, status/ included.
    state
        .patch_status(&svc("s-9"), json!({"loadBalancer": {}}))
        .await
        .unwrap();
    assert!(
        dir.join("status/patches/Service/default/s-9.yaml")
            .is_file()
    );

    // status/ deleted and re-created by the next write.
    std::fs::remove_dir_all(dir.join("status")).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    state
        .patch_status(&svc("s-2"), json!({"loadBalancer": {}}))
        .await
        .unwrap();
    assert!(
        dir.join("status/patches/Service/default/s-2.yaml")
            .is_file()
    );
    assert!(*state.attached().borrow());
}

#[tokio::test]
async fn a_named_lock_is_held_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let one = start(dir.path()).await;
    let two = start(dir.path()).await;
    let held = one
        .lock("controller")
        .unwrap()
        .expect("a lock on a state directory");
    let file = dir.path().join("status/locks/controller.lock");
    assert_eq!(held.path(), file);
    let record = std::fs::read_to_string(&file).unwrap();
    assert!(
        record.contains(&format!("pid: {}", std::process::id())),
        "{record}"
    );
    assert!(record.contains("host: "), "{record}");

    // Held: the error names the lock file and the holder's pid.
    let err = two.lock("controller").unwrap_err();
    assert!(
        matches!(err, metalnet::state::StateError::Locked { .. }),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.contains(&*file.to_string_lossy())
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // Another name is another lock.
    let speaker = two.lock("speaker-node-1").unwrap();
    assert!(speaker.is_some());
    // A name that cannot name a file is refused.
    assert!(two.lock("../x").is_err());

    // Standing by: taken as soon as the holder lets go.
    let waiting = tokio::spawn(async move {
        let lock = two.lock_wait("controller").await;
        (two, lock)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "took a held lock");
    drop(held);
    let (two, lock) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    let taken = lock.unwrap();
    assert!(taken.is_some());
    assert!(one.lock("controller").is_err());
    drop((two, taken));
}

#[tokio::test]
async fn input_over_the_limits_is_refused_and_keeps_what_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yaml");
    std::fs::write(&file, services_yaml(&EIGHT)).unwrap();
    let state = start(dir.path()).await;

    // A manifest grown over the per-file limit (sparse: no disk space used) is not read, and
    // what it held stays in force.
    let grown = services_yaml(&EIGHT);
    let f = std::fs::File::options().append(true).open(&file).unwrap();
    f.set_len(metalnet::manifest::MAX_FILE_BYTES + 1).unwrap();
    drop(f);
    services_stay(
        &state,
        &EIGHT,
        tokio::time::sleep(Duration::from_millis(300)),
    )
    .await;
    write_atomic(&file, &grown);
    drop(state);

    // More than the total per directory: refused at start, naming the directory and limit.
    for i in 0..5 {
        std::fs::File::create(dir.path().join(format!("big-{i}.yaml")))
            .unwrap()
            .set_len(60 * 1024 * 1024)
            .unwrap();
    }
    let err = ClusterState::start(Source::Dir(dir.path().to_path_buf()), Kind::ALL)
        .await
        .err()
        .expect("start must fail")
        .to_string();
    assert!(
        err.contains(&*dir.path().to_string_lossy())
            && err.contains("over the limit of 256 MiB per state directory"),
        "{err}"
    );
}

#[test]
fn names_kubernetes_rejects_make_the_object_invalid_on_any_backend() {
    // As a Kubernetes watcher would deliver it (no manifest reading in between).
    let snap = Snapshot::from_manifests([
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Web", "namespace": "default"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "_cluster"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}}),
    ]);
    assert_eq!(snap.services.len(), 1);
    let upper = &snap.invalid[&svc("Web")];
    assert!(upper.starts_with("metadata.name: \"Web\""), "{upper}");
    let cluster = &snap.invalid[&ObjectRef::new(Kind::Service, Some("_cluster"), "web")];
    assert!(
        cluster.starts_with("metadata.namespace: \"_cluster\""),
        "{cluster}"
    );
}

/// A ConfigMap volume changes by swapping its `..data` link to a new hidden directory; no
/// event names `pools.yaml` itself, so the refresh must list the tree to see it.
#[tokio::test]
async fn a_configmap_volume_update_is_seen() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_01")).unwrap();
    std::fs::write(
        root.join("..2026_01/pools.yaml"),
        pool("a", ["192.0.2.0/28"]).yaml(),
    )
    .unwrap();
    symlink("..2026_01", root.join("..data")).unwrap();
    symlink("..data/pools.yaml", root.join("pools.yaml")).unwrap();
    let state = start(root).await;
    let addresses = |s: &Snapshot| {
        s.ip_address_pools
            .get(&pool_ref("a").key())
            .map(|p| p.spec.addresses.clone())
    };
    assert_eq!(
        addresses(&state.snapshot()),
        Some(vec!["192.0.2.0/28".to_string()])
    );

    // What the kubelet does: a new timestamped directory, a new link renamed over `..data`,
    // the old directory removed.
    std::fs::create_dir(root.join("..2026_02")).unwrap();
    std::fs::write(
        root.join("..2026_02/pools.yaml"),
        pool("a", ["198.51.100.0/28"]).yaml(),
    )
    .unwrap();
    symlink("..2026_02", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_01")).unwrap();
    wait_for(&state, "the swapped ConfigMap content", |s| {
        addresses(s) == Some(vec!["198.51.100.0/28".to_string()])
    })
    .await;
}
