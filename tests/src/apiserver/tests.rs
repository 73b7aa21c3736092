//! Tests of the API stand-in itself, through kube's own client.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http::Method;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use metalnet::state::Kind;
use metalnet::state::kube::api_resource;
use serde_json::json;

use super::ApiServer;

const LIMIT: Duration = Duration::from_secs(20);
const SERVICES: &str = "/api/v1/namespaces/default/services";
const JSON: &str = "application/json";
const JSON_PATCH: &str = "application/json-patch+json";

type Events = BoxStream<'static, kube::Result<WatchEvent<DynamicObject>>>;

/// Runs `test` against a fresh stand-in, within [`LIMIT`].
async fn with_server(test: impl AsyncFnOnce(ApiServer)) {
    tokio::time::timeout(metalnet::testing::patient(LIMIT), async {
        test(ApiServer::start().await.expect("starting the stand-in")).await
    })
    .await
    .expect("the test finishes within LIMIT");
}

fn namespaced(server: &ApiServer, kind: Kind, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(server.client(), ns, &api_resource(kind))
}

fn services(server: &ApiServer, ns: &str) -> Api<DynamicObject> {
    namespaced(server, Kind::Service, ns)
}

/// Creates [`service`] `name` through `api`.
async fn create_service(api: &Api<DynamicObject>, name: &str) -> DynamicObject {
    api.create(&PostParams::default(), &service(name))
        .await
        .unwrap_or_else(|e| panic!("creating Service {name}: {e}"))
}

/// The resource version of a fresh list.
async fn list_version(api: &Api<DynamicObject>) -> String {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .expect("a list carries its resource version")
}

async fn watch(api: &Api<DynamicObject>, params: &WatchParams, version: &str) -> Events {
    api.watch(params, version).await.unwrap().boxed()
}

/// The next watch event; the stream must not end or fail.
async fn next_event(events: &mut Events) -> WatchEvent<DynamicObject> {
    events
        .try_next()
        .await
        .expect("a watch event, not a transport error")
        .expect("a watch event, not the end of the stream")
}

/// Sends a raw request (what kube's typed API cannot send), with a body of the given
/// content type if any, and returns the API error code it gets.
async fn raw_request_error(
    client: &kube::Client,
    method: Method,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> u16 {
    let mut req = http::Request::builder().method(method).uri(path);
    if let Some((content_type, _)) = body {
        req = req.header("content-type", content_type);
    }
    let req = req
        .body(body.map(|(_, b)| b.to_vec()).unwrap_or_default())
        .unwrap();
    api_code(client.request_text(req).await.unwrap_err())
}

fn service(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": { "type": "LoadBalancer", "ports": [{ "port": 80 }] },
        "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.99" }] } },
    }))
    .unwrap()
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn create_get_list_delete() {
    with_server(async |server| {
        let api = services(&server, "ns1");
        let created = create_service(&api, "web").await;
        let meta = &created.metadata;
        assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
        assert_eq!(meta.generation, Some(1));
        assert_eq!(meta.namespace.as_deref(), Some("ns1"));
        // Status is a subresource of Services: not set by create.
        assert!(created.data.get("status").is_none());

        let again = api.create(&PostParams::default(), &service("web")).await;
        assert_eq!(api_code(again.unwrap_err()), 409);

        create_service(&api, "db").await;
        create_service(&services(&server, "ns2"), "other").await;
        let list = api.list(&ListParams::default().limit(1)).await.unwrap();
        assert_eq!(list.items.len(), 2, "one page, no continue");
        assert!(list.metadata.continue_.is_none());
        assert_eq!(
            list.metadata.resource_version,
            Some(server.resource_version().to_string())
        );
        // Built-in kinds' list items have no apiVersion/kind, as from the real server.
        assert!(list.items.iter().all(|i| i.types.is_none()));
        let all: Api<DynamicObject> = Api::all_with(server.client(), &api_resource(Kind::Service));
        assert_eq!(
            all.list(&ListParams::default()).await.unwrap().items.len(),
            3
        );
        let selected = all
            .list(&ListParams::default().labels("app=db"))
            .await
            .unwrap();
        assert_eq!(selected.items.len(), 1);

        assert_eq!(
            api.get("web").await.unwrap().metadata.name.as_deref(),
            Some("web")
        );
        api.delete("web", &DeleteParams::default()).await.unwrap();
        assert_eq!(api_code(api.get("web").await.unwrap_err()), 404);
        let e = api.delete("web", &DeleteParams::default()).await;
        assert_eq!(api_code(e.unwrap_err()), 404);
    })
    .await;
}

#[tokio::test]
async fn status_subresource_and_patches() {
    with_server(async |server| {
        let api = services(&server, "default");
        create_service(&api, "web").await;

        let status =
            json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.1" }] } } });
        let patched = api
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        assert_eq!(patched.data["status"], status["status"]);
        assert_eq!(patched.metadata.generation, Some(1), "status is not spec");

        // A main-resource patch cannot change status, and keeps it.
        let p = json!({
            "metadata": { "annotations": { "a": "1" } },
            "spec": { "type": "ClusterIP" },
            "status": { "loadBalancer": {} },
        });
        let patched = api
            .patch("web", &PatchParams::default(), &Patch::Strategic(&p))
            .await
            .unwrap();
        assert_eq!(patched.data["status"], status["status"]);
        assert_eq!(patched.data["spec"]["type"], "ClusterIP");
        assert_eq!(patched.metadata.generation, Some(2));
        let rm = json!({ "metadata": { "annotations": { "a": null } } });
        let patched = api
            .patch("web", &PatchParams::default(), &Patch::Merge(&rm))
            .await
            .unwrap();
        assert!(
            patched
                .metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .is_empty()
        );

        // Stale resourceVersion on replace: 409.
        let mut stale = patched.clone();
        stale.metadata.resource_version = Some("1".into());
        let e = api
            .replace("web", &PostParams::default(), &stale)
            .await
            .unwrap_err();
        assert_eq!(api_code(e), 409);

        // Server-side apply creates, then merges; it needs a field manager.
        let pools = namespaced(&server, Kind::IPAddressPool, "metallb-system");
        let pool = json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": { "name": "p" },
            "spec": { "addresses": ["192.0.2.0/28"] },
        });
        let ssa = PatchParams::apply("test").force();
        pools.patch("p", &ssa, &Patch::Apply(&pool)).await.unwrap();
        let applied = pools.patch("p", &ssa, &Patch::Apply(&pool)).await.unwrap();
        assert_eq!(
            applied.metadata.generation,
            Some(1),
            "no change, no new generation"
        );
        let e = pools
            .patch("p", &PatchParams::default(), &Patch::Apply(&pool))
            .await
            .unwrap_err();
        assert_eq!(api_code(e), 400);
        let st = json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": { "name": "p" }, "status": { "assignedIPv4": 1 },
        });
        let applied = pools
            .patch_status("p", &ssa, &Patch::Apply(&st))
            .await
            .unwrap();
        assert_eq!(applied.data["status"]["assignedIPv4"], 1);
        assert_eq!(applied.data["spec"]["addresses"][0], "192.0.2.0/28");
        // Custom resources' list items keep apiVersion/kind.
        let list = pools.list(&ListParams::default()).await.unwrap();
        assert!(list.items[0].types.is_some());
        // No status subresource on L2Advertisement; unknown kinds are 404.
        let e = namespaced(&server, Kind::L2Advertisement, "x")
            .patch_status("a", &PatchParams::default(), &Patch::Merge(&json!({})))
            .await
            .unwrap_err();
        assert_eq!(api_code(e), 404);
    })
    .await;
}

#[tokio::test]
async fn watch_from_version_and_410_after_compaction() {
    with_server(async |server| {
        let api = services(&server, "default");
        create_service(&api, "a").await;
        let rv = list_version(&api).await;
        let mut events = watch(&api, &WatchParams::default().timeout(10), &rv).await;
        create_service(&api, "b").await;
        server
            .put(serde_json::to_value(service("b")).unwrap())
            .unwrap();
        api.delete("a", &DeleteParams::default()).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let (what, o) = match next_event(&mut events).await {
                WatchEvent::Added(o) => ("ADDED", o),
                WatchEvent::Modified(o) => ("MODIFIED", o),
                WatchEvent::Deleted(o) => ("DELETED", o),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watch error {e:?}"),
            };
            seen.push(format!("{what} {}", o.metadata.name.unwrap()));
        }
        assert_eq!(seen, ["ADDED b", "MODIFIED b", "DELETED a"]);

        // Compaction ends the open watch, and resuming from the old version is 410 Gone.
        server.compact();
        assert!(
            events.next().await.is_none(),
            "open watch ends at compaction"
        );
        let mut events = watch(&api, &WatchParams::default(), &rv).await;
        match next_event(&mut events).await {
            WatchEvent::Error(e) => assert_eq!(e.code, 410),
            other => panic!("expected a 410 error event, got {other:?}"),
        }
        assert!(server.requests().iter().any(|r| r.watch_expired));
        // A fresh list's version can be watched again.
        let rv = list_version(&api).await;
        let mut events = watch(&api, &WatchParams::default(), &rv).await;
        create_service(&api, "c").await;
        match next_event(&mut events).await {
            WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("c")),
            other => panic!("expected ADDED c, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn stop_refuses_and_ends_watches_and_resume_serves_the_same_objects() {
    with_server(async |mut server| {
        let api = services(&server, "default");
        create_service(&api, "a").await;
        let rv = list_version(&api).await;
        let mut events = watch(&api, &WatchParams::default().timeout(30), &rv).await;

        // Stopped: the open watch ends and new requests fail without an answer.
        server.stop().await;
        let ended = events.next().await;
        assert!(
            ended.is_none() || matches!(ended, Some(Err(_))),
            "open watch ends at stop: {ended:?}"
        );
        let refused = api.get("a").await;
        assert!(
            matches!(&refused, Err(e) if !matches!(e, kube::Error::Api(_))),
            "a stopped stand-in answers nothing: {refused:?}"
        );
        // Objects written meanwhile (as by another client of etcd) are there after resume.
        server
            .put(serde_json::to_value(service("b")).unwrap())
            .unwrap();

        server.resume().await.unwrap();
        server.resume().await.unwrap();
        let got = api.get("a").await.unwrap();
        assert_eq!(got.metadata.name.as_deref(), Some("a"));
        // A watch from the version seen before the stop resumes without a gap.
        let mut events = watch(&api, &WatchParams::default().timeout(10), &rv).await;
        match next_event(&mut events).await {
            WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
            other => panic!("expected ADDED b, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn watch_times_out_with_a_bookmark() {
    with_server(async |server| {
        let api = services(&server, "default");
        let rv = server.resource_version().to_string();
        let mut events = watch(&api, &WatchParams::default().timeout(1), &rv).await;
        match next_event(&mut events).await {
            WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
            other => panic!("expected a bookmark, got {other:?}"),
        }
        assert!(events.next().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn kubeconfig_and_errors_are_status_objects() {
    with_server(async |server| {
        let dir = tempfile::tempdir().unwrap();
        let path = server.kubeconfig(dir.path()).unwrap();
        let client = metalnet::state::kube::client(Some(&path)).await.unwrap();
        let nodes: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(Kind::Node));
        assert!(
            nodes
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );

        // Requests kube's typed API cannot send: an unknown kind, an object without a name,
        // a JSON patch.
        let unknown_kind = "/apis/example.com/v1/things";
        let nameless: &[u8] = br#"{"apiVersion":"v1","kind":"Service","metadata":{}}"#;
        let json_patch: &[u8] = b"[]";
        let service_x = format!("{SERVICES}/x");
        for (method, path, body, code) in [
            (Method::GET, unknown_kind, None, 404),
            (Method::POST, SERVICES, Some((JSON, nameless)), 422),
            (
                Method::PATCH,
                &service_x,
                Some((JSON_PATCH, json_patch)),
                415,
            ),
        ] {
            let got = raw_request_error(&client, method.clone(), path, body).await;
            assert_eq!(got, code, "{method} {path}");
        }
        let e = services(&server, "default")
            .list(&ListParams::default().labels("app in (a,b)"))
            .await
            .unwrap_err();
        assert_eq!(
            api_code(e),
            400,
            "set-based selectors are refused, not ignored"
        );
        let missing = nodes.get("n1").await.unwrap_err();
        assert_eq!(api_code(missing), 404);
        server
            .apply_yaml(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n",
            )
            .unwrap();
        assert_eq!(
            nodes
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            2
        );
        assert!(server.get(Kind::Node, None, "n1").is_some());
        assert!(server.delete(Kind::Node, None, "n1"));
        assert!(!server.delete(Kind::Node, None, "n1"));
    })
    .await;
}

#[tokio::test]
async fn start_in_a_missing_namespace_names_it() {
    let missing = format!("metalnet-no-such-netns-{}", std::process::id());
    let addr = "192.0.2.5:6443".parse().expect("constant address");
    let Err(e) = ApiServer::start_in_netns(&missing, addr).await else {
        panic!("started in a namespace that does not exist");
    };
    let message = format!("{e:#}");
    assert!(message.contains(&missing), "{message}");
    assert!(message.contains("192.0.2.5:6443"), "{message}");
}

/// What Multus sends for network-status (GET, then PUT of `pods/NAME/status` with the
/// annotation set) and what metalnet sends (a merge patch of `metadata.annotations` on
/// `pods/NAME/status`) both change the Pod's annotations, as the real server's pod status
/// strategy allows, but never its spec; Events are created; NetworkAttachmentDefinitions
/// are listed and watched.
#[tokio::test]
async fn pod_status_writes_change_annotations_events_and_nads() {
    with_server(async |server| {
        server
            .apply_yaml(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns1\n  annotations:\n    k8s.v1.cni.cncf.io/networks: net-a\nspec:\n  nodeName: node1\n  containers:\n  - name: c\n    image: i\n",
            )
            .unwrap();
        let pods = namespaced(&server, Kind::Pod, "ns1");
        let mut pod = pods.get("p").await.unwrap();
        let annotations = pod.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert("k8s.v1.cni.cncf.io/network-status".into(), "[]".into());
        pod.data["spec"]["nodeName"] = json!("elsewhere");
        let put = pods
            .replace_status("p", &PostParams::default(), &pod)
            .await
            .unwrap();
        let a = put.metadata.annotations.clone().unwrap();
        assert_eq!(a["k8s.v1.cni.cncf.io/network-status"], "[]");
        assert_eq!(a["k8s.v1.cni.cncf.io/networks"], "net-a");
        assert_eq!(put.data["spec"]["nodeName"], "node1", "status writes keep the spec");

        let patch = json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/network-status": "[{}]"}}});
        let patched = pods
            .patch_status("p", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let a = patched.metadata.annotations.unwrap();
        assert_eq!(a["k8s.v1.cni.cncf.io/network-status"], "[{}]");
        assert_eq!(a["k8s.v1.cni.cncf.io/networks"], "net-a");

        // Other kinds' status writes still leave metadata alone.
        let svc = services(&server, "default");
        create_service(&svc, "web").await;
        let patched = svc
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"x": "1"}}})),
            )
            .await
            .unwrap();
        assert!(patched.metadata.annotations.unwrap_or_default().is_empty());

        // Events.
        let events = namespaced(&server, Kind::Event, "ns1");
        let event: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": "p.", "namespace": "ns1"},
            "involvedObject": {"kind": "Pod", "namespace": "ns1", "name": "p"},
            "reason": "AddedInterface", "message": "Add net1 [192.0.2.1/24] from ns1/net-a",
            "type": "Normal",
        }))
        .unwrap();
        events.create(&PostParams::default(), &event).await.unwrap();
        let listed = events.list(&ListParams::default()).await.unwrap();
        assert_eq!(listed.items[0].data["reason"], "AddedInterface");

        // NetworkAttachmentDefinitions: list, then watch from the list's version.
        let nads = namespaced(&server, Kind::NetworkAttachmentDefinition, "ns1");
        let version = list_version(&nads).await;
        let mut stream = watch(&nads, &WatchParams::default(), &version).await;
        server
            .apply_yaml(
                "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: net-a\n  namespace: ns1\nspec:\n  config: '{\"cniVersion\":\"1.0.0\",\"type\":\"macvlan\"}'\n",
            )
            .unwrap();
        match next_event(&mut stream).await {
            WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("net-a")),
            other => panic!("expected Added, got {other:?}"),
        }
        let listed = nads.list(&ListParams::default()).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        assert!(
            server
                .requests()
                .iter()
                .any(|r| r.path == "/apis/k8s.cni.cncf.io/v1/namespaces/ns1/network-attachment-definitions")
        );
    })
    .await;
}
