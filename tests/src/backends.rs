//! Both cluster-state backends behind one test interface, so behavioural tests run the same
//! scenarios on the state directory and on the API stand-in ([`crate::apiserver`]), playing
//! the user who writes objects (`kubectl apply` / editing files) and reading back Events.

use std::path::PathBuf;

use metalnet::state::{ClusterState, Kind, ObjectRef, Source};
use serde_json::Value;

use crate::apiserver::ApiServer;

/// One backend, with the user's side of it.
#[allow(async_fn_in_trait)] // test helper: only ever used with concrete types
pub trait Harness {
    /// Creates or replaces a user object from one YAML document. Like `kubectl apply`, it
    /// leaves the status the suite wrote alone.
    async fn put(&self, yaml: &str);
    /// Deletes a user object.
    async fn delete(&self, obj: &ObjectRef);
    /// A new `ClusterState` over `kinds`.
    async fn open(&self, kinds: &[Kind]) -> ClusterState;
    /// The Events recorded about `regarding`, as stored.
    async fn events(&self, regarding: &ObjectRef) -> Vec<Value>;
}

/// The object a manifest names.
pub fn object_ref(value: &Value) -> ObjectRef {
    ObjectRef::of_manifest(value).expect("a manifest naming an object of a kind the suite knows")
}

/// The state directory: user objects are files in a temporary directory.
pub struct DirHarness {
    pub dir: tempfile::TempDir,
}

impl DirHarness {
    pub fn new() -> Self {
        DirHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn file_of(&self, obj: &ObjectRef) -> PathBuf {
        let ns = obj.namespace.as_deref().unwrap_or("_cluster");
        self.dir
            .path()
            .join(format!("{}-{ns}-{}.yaml", obj.kind, obj.name))
    }
}

impl Default for DirHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for DirHarness {
    async fn put(&self, yaml: &str) {
        let value: Value = serde_saphyr::from_str(yaml).expect("test YAML parses");
        let path = self.file_of(&object_ref(&value));
        // Written beside and renamed, as an editor would, so no half file is ever read.
        let tmp = self.dir.path().join(".incoming.tmp");
        std::fs::write(&tmp, yaml).expect("writing a manifest");
        std::fs::rename(&tmp, &path).expect("renaming a manifest");
    }

    async fn delete(&self, obj: &ObjectRef) {
        std::fs::remove_file(self.file_of(obj)).expect("removing a manifest");
    }

    async fn open(&self, kinds: &[Kind]) -> ClusterState {
        ClusterState::start(Source::Dir(self.dir.path().into()), kinds.iter().copied())
            .await
            .expect("starting on the state directory")
    }

    async fn events(&self, regarding: &ObjectRef) -> Vec<Value> {
        metalnet::state::dir::list_events(self.dir.path(), regarding)
    }
}

/// The Kubernetes backend against the API stand-in.
pub struct KubeHarness {
    pub server: ApiServer,
}

impl KubeHarness {
    pub async fn new() -> Self {
        KubeHarness {
            server: ApiServer::start().await.expect("starting the API stand-in"),
        }
    }
}

impl Harness for KubeHarness {
    async fn put(&self, yaml: &str) {
        let mut value: Value = serde_saphyr::from_str(yaml).expect("test YAML parses");
        let obj = object_ref(&value);
        if let Some(current) = self
            .server
            .get(obj.kind, obj.namespace.as_deref(), &obj.name)
            && let Some(status) = current.get("status")
        {
            value["status"] = status.clone();
        }
        self.server.put(value).expect("storing a user object");
    }

    async fn delete(&self, obj: &ObjectRef) {
        assert!(
            self.server
                .delete(obj.kind, obj.namespace.as_deref(), &obj.name),
            "{obj} existed"
        );
    }

    async fn open(&self, kinds: &[Kind]) -> ClusterState {
        ClusterState::start(Source::Kube(self.server.client()), kinds.iter().copied())
            .await
            .expect("starting on the API stand-in")
    }

    async fn events(&self, regarding: &ObjectRef) -> Vec<Value> {
        self.server
            .list(Kind::Event)
            .into_iter()
            .filter(|e| metalnet::state::dir::event_is_about(e, regarding))
            .collect()
    }
}
