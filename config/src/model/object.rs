//! The vocabulary of resources: which kinds exist ([`Kind`]) and how one object is named
//! ([`ObjectRef`], [`ObjectKey`]). Every layer speaks it, so it lives with the model.

use std::fmt;

use super::names;

/// Every kind of object the suite reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    Pod,
    Secret,
    Namespace,
    IPAddressPool,
    L2Advertisement,
    BGPAdvertisement,
    Community,
    BGPPeer,
    NetworkAttachmentDefinition,
    ServiceL2Status,
    ServiceBGPStatus,
    Event,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::Pod,
        Kind::Secret,
        Kind::Namespace,
        Kind::IPAddressPool,
        Kind::L2Advertisement,
        Kind::BGPAdvertisement,
        Kind::Community,
        Kind::BGPPeer,
        Kind::NetworkAttachmentDefinition,
        Kind::ServiceL2Status,
        Kind::ServiceBGPStatus,
        Kind::Event,
    ];

    /// API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Service
            | Kind::Node
            | Kind::Pod
            | Kind::Secret
            | Kind::Namespace
            | Kind::Event => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::NetworkAttachmentDefinition => "k8s.cni.cncf.io",
            _ => "metallb.io",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Kind::Service
            | Kind::Node
            | Kind::Pod
            | Kind::Secret
            | Kind::Namespace
            | Kind::Event => "v1",
            Kind::EndpointSlice | Kind::NetworkAttachmentDefinition => "v1",
            Kind::BGPPeer => "v1beta2",
            _ => "v1beta1",
        }
    }

    /// `apiVersion` as written in manifests.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => self.version().to_string(),
            g => format!("{g}/{}", self.version()),
        }
    }

    /// `kind` as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::Namespace => "Namespace",
            Kind::IPAddressPool => "IPAddressPool",
            Kind::L2Advertisement => "L2Advertisement",
            Kind::BGPAdvertisement => "BGPAdvertisement",
            Kind::Community => "Community",
            Kind::BGPPeer => "BGPPeer",
            Kind::NetworkAttachmentDefinition => "NetworkAttachmentDefinition",
            Kind::ServiceL2Status => "ServiceL2Status",
            Kind::ServiceBGPStatus => "ServiceBGPStatus",
            Kind::Event => "Event",
        }
    }

    /// The resource's plural, as in API paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
            Kind::Namespace => "namespaces",
            Kind::IPAddressPool => "ipaddresspools",
            Kind::L2Advertisement => "l2advertisements",
            Kind::BGPAdvertisement => "bgpadvertisements",
            Kind::Community => "communities",
            Kind::BGPPeer => "bgppeers",
            Kind::NetworkAttachmentDefinition => "network-attachment-definitions",
            Kind::ServiceL2Status => "servicel2statuses",
            Kind::ServiceBGPStatus => "servicebgpstatuses",
            Kind::Event => "events",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace)
    }

    /// The kind named by a manifest's `apiVersion` and `kind`; older metallb.io versions of a
    /// kind are accepted (their fields are a subset of the current ones).
    pub fn from_manifest(api_version: &str, kind: &str) -> Option<Kind> {
        let k = Kind::ALL.into_iter().find(|k| k.name() == kind)?;
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        (group == k.group()).then_some(k)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names one object: `Kind/namespace/name` (cluster-scoped kinds have no namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> Self {
        ObjectRef {
            kind,
            namespace: if kind.namespaced() {
                Some(namespace.unwrap_or("default").to_string())
            } else {
                None
            },
            name: name.to_string(),
        }
    }

    /// The object a manifest names by `apiVersion`, `kind` and `metadata`; `None` for a kind
    /// the suite does not know or a manifest without a name.
    pub fn of_manifest(value: &serde_json::Value) -> Option<ObjectRef> {
        let kind = Kind::from_manifest(value["apiVersion"].as_str()?, value["kind"].as_str()?)?;
        let name = value["metadata"]["name"].as_str()?;
        Some(ObjectRef::new(
            kind,
            value["metadata"]["namespace"].as_str(),
            name,
        ))
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for ObjectRef {
    // Names come from outside: escaped, so a newline in one cannot forge a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = names::escape(&self.name);
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{name}", self.kind, names::escape(ns)),
            None => write!(f, "{}/{name}", self.kind),
        }
    }
}

/// Namespace and name of an object within one kind's map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = names::escape(&self.name);
        match &self.namespace {
            Some(ns) => write!(f, "{}/{name}", names::escape(ns)),
            None => f.write_str(&name),
        }
    }
}
