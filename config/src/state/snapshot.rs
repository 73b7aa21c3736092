//! The typed objects at one moment ([`Snapshot`]), decoded the same way whichever backend
//! delivered them. Pure: building one needs no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::model::core::{EndpointSlice, Namespace, Node, Pod, Secret, Service};
use crate::model::{
    BGPAdvertisement, BGPPeer, Community, IPAddressPool, Kind, L2Advertisement,
    NetworkAttachmentDefinition, ObjectKey, ObjectRef, ServiceBGPStatus, ServiceL2Status,
};

/// One kind's objects. Each map is behind an `Arc` so a new snapshot copies only the kind
/// that changed.
pub type Objects<T> = Arc<BTreeMap<ObjectKey, Arc<T>>>;

/// The current objects, typed, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Objects<Service>,
    pub endpoint_slices: Objects<EndpointSlice>,
    pub nodes: Objects<Node>,
    pub pods: Objects<Pod>,
    pub secrets: Objects<Secret>,
    pub namespaces: Objects<Namespace>,
    pub ip_address_pools: Objects<IPAddressPool>,
    pub l2_advertisements: Objects<L2Advertisement>,
    pub bgp_advertisements: Objects<BGPAdvertisement>,
    pub communities: Objects<Community>,
    pub bgp_peers: Objects<BGPPeer>,
    pub network_attachment_definitions: Objects<NetworkAttachmentDefinition>,
    pub service_l2_statuses: Objects<ServiceL2Status>,
    pub service_bgp_statuses: Objects<ServiceBGPStatus>,
    /// Objects that could not be read: what is wrong with each, naming the field where
    /// serde can tell. They are left out of the typed maps; the rest keeps working.
    pub invalid: Arc<BTreeMap<ObjectRef, String>>,
}

impl Snapshot {
    /// A snapshot of these manifests, decoded as a backend would decode them (for tests and
    /// tools that work on objects in hand). Manifests naming no known object are skipped.
    pub fn from_manifests(manifests: impl IntoIterator<Item = serde_json::Value>) -> Arc<Snapshot> {
        let mut snapshot = Snapshot::default();
        for value in manifests {
            if let Some(obj) = ObjectRef::of_manifest(&value) {
                snapshot.insert(&obj, &value);
            }
        }
        Arc::new(snapshot)
    }
}

/// A change delivered by a backend.
#[derive(Clone, Debug)]
pub enum Delta {
    /// The object exists with this content (created or modified).
    Apply(ObjectRef, serde_json::Value),
    /// The object is gone.
    Delete(ObjectRef),
}

fn decode<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    // serde_path_to_error would name the field; serde_json's message already does for most.
    T::deserialize(value).map_err(|e| e.to_string())
}

macro_rules! snapshot_kinds {
    ($( $kind:ident => $field:ident : $ty:ty ),* $(,)?) => {
        impl Snapshot {
            /// Puts a raw object in, decoded (or recorded as invalid with why).
            pub fn insert(&mut self, obj: &ObjectRef, value: &serde_json::Value) {
                if let Err(e) = crate::model::names::check_names(obj) {
                    self.remove(obj);
                    Arc::make_mut(&mut self.invalid)
                        .insert(obj.clone(), format!("{}: {}", e.field, e.message));
                    return;
                }
                let invalid = Arc::make_mut(&mut self.invalid);
                match obj.kind {
                    $( Kind::$kind => match decode::<$ty>(&crate::model::normalize(obj.kind, value)) {
                        Ok(t) => {
                            Arc::make_mut(&mut self.$field).insert(obj.key(), Arc::new(t));
                            invalid.remove(obj);
                        }
                        Err(e) => {
                            Arc::make_mut(&mut self.$field).remove(&obj.key());
                            invalid.insert(obj.clone(), e);
                        }
                    }, )*
                    Kind::Event => {}
                }
            }

            /// Takes an object out.
            pub fn remove(&mut self, obj: &ObjectRef) {
                Arc::make_mut(&mut self.invalid).remove(obj);
                match obj.kind {
                    $( Kind::$kind => { Arc::make_mut(&mut self.$field).remove(&obj.key()); } )*
                    Kind::Event => {}
                }
            }
        }
    };
}

snapshot_kinds! {
    Service => services: Service,
    EndpointSlice => endpoint_slices: EndpointSlice,
    Node => nodes: Node,
    Pod => pods: Pod,
    Secret => secrets: Secret,
    Namespace => namespaces: Namespace,
    IPAddressPool => ip_address_pools: IPAddressPool,
    L2Advertisement => l2_advertisements: L2Advertisement,
    BGPAdvertisement => bgp_advertisements: BGPAdvertisement,
    Community => communities: Community,
    BGPPeer => bgp_peers: BGPPeer,
    NetworkAttachmentDefinition => network_attachment_definitions: NetworkAttachmentDefinition,
    ServiceL2Status => service_l2_statuses: ServiceL2Status,
    ServiceBGPStatus => service_bgp_statuses: ServiceBGPStatus,
}
