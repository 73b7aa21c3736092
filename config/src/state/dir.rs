//! The state-directory backend (the embedded default). Not yet written.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Core, EventRecord, MetadataPatch, ObjectRef, StateError};

pub struct DirBackend {
    #[allow(dead_code)]
    core: Arc<Core>,
}

impl DirBackend {
    pub async fn start(_path: PathBuf, core: Arc<Core>) -> Result<Self, StateError> {
        Ok(DirBackend { core })
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
