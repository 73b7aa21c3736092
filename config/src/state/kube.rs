//! The Kubernetes API backend. Not yet written.

use std::sync::Arc;

use super::{Core, EventRecord, MetadataPatch, ObjectRef, StateError};

pub struct KubeBackend {
    #[allow(dead_code)]
    core: Arc<Core>,
}

impl KubeBackend {
    pub async fn start(_client: ::kube::Client, core: Arc<Core>) -> Result<Self, StateError> {
        Ok(KubeBackend { core })
    }
    pub async fn patch_status(
        &self,
        _obj: &ObjectRef,
        _status: serde_json::Value,
    ) -> Result<(), StateError> {
        unimplemented!()
    }
    pub async fn patch_metadata(
        &self,
        _obj: &ObjectRef,
        _patch: &MetadataPatch,
    ) -> Result<(), StateError> {
        unimplemented!()
    }
    pub async fn apply(
        &self,
        _obj: &ObjectRef,
        _value: serde_json::Value,
    ) -> Result<(), StateError> {
        unimplemented!()
    }
    pub async fn delete(&self, _obj: &ObjectRef) -> Result<(), StateError> {
        unimplemented!()
    }
    pub async fn record_event(
        &self,
        _regarding: &ObjectRef,
        _event: &EventRecord,
    ) -> Result<(), StateError> {
        unimplemented!()
    }
}

/// A client from an explicit kubeconfig, else in-cluster, else ~/.kube/config.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<::kube::Client, StateError> {
    let _ = kubeconfig;
    Ok(::kube::Client::try_default().await?)
}
