//! Typed builders for the manifests tests feed to metalnet, each starting from the smallest
//! object the suite accepts and adding only what a test asks for.
//!
//! ```
//! use metalnet::testing::*;
//!
//! let snap = snapshot([
//!     node("node1").ready().internal_ip("192.0.2.11").json(),
//!     pool("site", ["192.0.2.0/24"]).json(),
//!     service("web").ingress(["192.0.2.1"]).json(),
//!     endpoint_slice("web").ready_on("node1").json(),
//!     l2_advertisement("l2").json(),
//! ]);
//! assert_eq!(snap.services.len(), 1);
//! ```

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::state::{ObjectRef, Snapshot};

/// The namespace MetalLB's own objects live in.
pub const METALLB_NS: &str = "metallb-system";

/// What every builder shares: the manifest under construction and the metadata setters.
pub trait Manifest: Sized {
    /// The manifest as built so far.
    fn value(&self) -> &Value;
    /// The manifest, for the setters.
    fn value_mut(&mut self) -> &mut Value;

    /// The manifest as JSON.
    fn json(&self) -> Value {
        self.value().clone()
    }

    /// The manifest as one YAML document (no `---`).
    fn yaml(&self) -> String {
        to_yaml(self.value())
    }

    /// The manifest as a YAML document introduced by `---`, ready to concatenate into a
    /// stream.
    fn document(&self) -> String {
        format!("---\n{}", self.yaml())
    }

    /// The object the manifest names.
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::of_manifest(self.value()).expect("builders name a known kind")
    }

    /// The object and its manifest, the pair validation and the state backends take.
    fn pair(&self) -> (ObjectRef, Value) {
        (self.object_ref(), self.json())
    }

    /// `metadata.namespace`.
    fn namespace(mut self, namespace: &str) -> Self {
        self.value_mut()["metadata"]["namespace"] = json!(namespace);
        self
    }

    /// One entry of `metadata.labels`.
    fn label(mut self, key: &str, value: &str) -> Self {
        entry(self.value_mut(), &["metadata", "labels"])[key] = json!(value);
        self
    }

    /// One entry of `metadata.annotations`.
    fn annotation(mut self, key: &str, value: &str) -> Self {
        entry(self.value_mut(), &["metadata", "annotations"])[key] = json!(value);
        self
    }

    /// `metadata.uid`.
    fn uid(mut self, uid: &str) -> Self {
        self.value_mut()["metadata"]["uid"] = json!(uid);
        self
    }

    /// Sets `spec.KEY` (a `null` value removes it): the escape hatch for fields without a setter.
    fn spec(mut self, key: &str, value: Value) -> Self {
        set(entry(self.value_mut(), &["spec"]), key, value);
        self
    }

    /// Sets the top-level `KEY` (`status`, or `addressType` and the like for kinds without a
    /// spec); a `null` value removes it.
    fn field(mut self, key: &str, value: Value) -> Self {
        set(self.value_mut(), key, value);
        self
    }
}

/// Several manifests as one YAML stream, each document introduced by `---`.
pub fn yaml_stream<'a>(manifests: impl IntoIterator<Item = &'a Value>) -> String {
    manifests
        .into_iter()
        .map(|m| format!("---\n{}", to_yaml(m)))
        .collect()
}

/// A snapshot of these manifests, decoded as a backend decodes them.
pub fn snapshot(manifests: impl IntoIterator<Item = Value>) -> Arc<Snapshot> {
    Snapshot::from_manifests(manifests)
}

/// YAML when it reads back as the same value, JSON (also YAML) otherwise.
pub fn to_yaml(value: &Value) -> String {
    if let Ok(s) = serde_saphyr::to_string(value)
        && serde_saphyr::from_str::<Value>(&s).ok().as_ref() == Some(value)
    {
        return s;
    }
    let mut s = serde_json::to_string_pretty(value).expect("a JSON value serializes");
    s.push('\n');
    s
}

/// The object at `path` under `v`, created empty where missing.
fn entry<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |v, k| {
        let map = match v {
            Value::Object(m) => m,
            other => {
                *other = Value::Object(Map::new());
                other.as_object_mut().expect("just made an object")
            }
        };
        map.entry(k.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
    })
}

fn set(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.to_string(), value);
        }
    }
}

fn push(v: &mut Value, path: &[&str], item: Value) {
    let (last, parent) = path.split_last().expect("a non-empty path");
    let parent = entry(v, parent);
    match &mut parent[*last] {
        Value::Array(a) => a.push(item),
        slot => *slot = json!([item]),
    }
}

fn strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|s| Value::String(s.as_ref().to_string()))
            .collect(),
    )
}

macro_rules! builder {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name(Value);

        impl Manifest for $name {
            fn value(&self) -> &Value {
                &self.0
            }
            fn value_mut(&mut self) -> &mut Value {
                &mut self.0
            }
        }

        impl From<$name> for Value {
            fn from(b: $name) -> Value {
                b.0
            }
        }
    };
}

builder!(
    /// A Node: see [`node`].
    NodeBuilder
);
builder!(
    /// An IPAddressPool: see [`pool`].
    PoolBuilder
);
builder!(
    /// A Service: see [`service`].
    ServiceBuilder
);
builder!(
    /// An EndpointSlice: see [`endpoint_slice`].
    EndpointSliceBuilder
);
builder!(
    /// An L2Advertisement or a BGPAdvertisement: see [`l2_advertisement`], [`bgp_advertisement`].
    AdvertisementBuilder
);
builder!(
    /// A BGPPeer: see [`bgp_peer`].
    PeerBuilder
);
builder!(
    /// Any other object: see [`object`].
    ObjectBuilder
);

/// A Node with only a name; add conditions, addresses and labels with the setters.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
}

impl NodeBuilder {
    /// A `Ready` condition with status `True`.
    pub fn ready(self) -> Self {
        self.condition("Ready", "True")
    }

    /// A `Ready` condition with status `False`.
    pub fn not_ready(self) -> Self {
        self.condition("Ready", "False")
    }

    /// A condition of `type_` with `status` (`True`, `False`, `Unknown`).
    pub fn condition(mut self, type_: &str, status: &str) -> Self {
        push(
            &mut self.0,
            &["status", "conditions"],
            json!({"type": type_, "status": status}),
        );
        self
    }

    /// An `InternalIP` address (call again for a second family).
    pub fn internal_ip(self, ip: &str) -> Self {
        self.address("InternalIP", ip)
    }

    /// An address of `type_` (`InternalIP`, `ExternalIP`, `Hostname`).
    pub fn address(mut self, type_: &str, address: &str) -> Self {
        push(
            &mut self.0,
            &["status", "addresses"],
            json!({"type": type_, "address": address}),
        );
        self
    }

    /// `spec.podCIDR` and `spec.podCIDRs`.
    pub fn pod_cidrs<S: AsRef<str>>(mut self, cidrs: impl IntoIterator<Item = S>) -> Self {
        let list = strings(cidrs);
        let spec = entry(&mut self.0, &["spec"]);
        if let Some(first) = list.get(0).cloned() {
            spec["podCIDR"] = first;
        }
        spec["podCIDRs"] = list;
        self
    }
}

/// An IPAddressPool in `metallb-system` with these addresses (CIDRs or `from-to` ranges).
pub fn pool<S: AsRef<str>>(name: &str, addresses: impl IntoIterator<Item = S>) -> PoolBuilder {
    PoolBuilder(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": name, "namespace": METALLB_NS},
        "spec": {"addresses": strings(addresses)},
    }))
}

impl PoolBuilder {
    /// `spec.autoAssign`.
    pub fn auto_assign(self, on: bool) -> Self {
        self.spec("autoAssign", json!(on))
    }

    /// `spec.avoidBuggyIPs`.
    pub fn avoid_buggy_ips(self, on: bool) -> Self {
        self.spec("avoidBuggyIPs", json!(on))
    }

    /// `spec.serviceAllocation` (priority, namespaces, selectors).
    pub fn service_allocation(self, allocation: Value) -> Self {
        self.spec("serviceAllocation", allocation)
    }
}

/// A `LoadBalancer` Service `default/NAME` with one port, 80.
pub fn service(name: &str) -> ServiceBuilder {
    ServiceBuilder(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }))
}

impl ServiceBuilder {
    /// `spec.type` (`ClusterIP` to take the Service away from metalnet).
    pub fn type_(self, type_: &str) -> Self {
        self.spec("type", json!(type_))
    }

    /// The requested address, `spec.loadBalancerIP`.
    pub fn lb_ip(self, ip: &str) -> Self {
        self.spec("loadBalancerIP", json!(ip))
    }

    /// `spec.externalTrafficPolicy` (`Cluster`, `Local`).
    pub fn traffic_policy(self, policy: &str) -> Self {
        self.spec("externalTrafficPolicy", json!(policy))
    }

    /// `spec.ipFamilies`.
    pub fn ip_families<S: AsRef<str>>(self, families: impl IntoIterator<Item = S>) -> Self {
        self.spec("ipFamilies", strings(families))
    }

    /// `spec.ipFamilies` derived from the addresses: `IPv4` and/or `IPv6`, in their order.
    pub fn families_of(self, ips: &[&str]) -> Self {
        let mut families: Vec<&str> = ips
            .iter()
            .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
            .collect();
        families.dedup();
        self.ip_families(families)
    }

    /// The assigned addresses, `status.loadBalancer.ingress`, as the controller writes them.
    pub fn ingress<S: AsRef<str>>(mut self, ips: impl IntoIterator<Item = S>) -> Self {
        let ingress: Vec<Value> = ips
            .into_iter()
            .map(|ip| json!({"ip": ip.as_ref()}))
            .collect();
        entry(&mut self.0, &["status", "loadBalancer"])["ingress"] = Value::Array(ingress);
        self
    }
}

/// An EndpointSlice `default/SERVICE-1` of the Service `SERVICE`, IPv4, with no endpoints.
pub fn endpoint_slice(service: &str) -> EndpointSliceBuilder {
    EndpointSliceBuilder(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [],
    }))
}

impl EndpointSliceBuilder {
    /// `metadata.name`.
    pub fn name(mut self, name: &str) -> Self {
        self.0["metadata"]["name"] = json!(name);
        self
    }

    /// `addressType` (`IPv4`, `IPv6`).
    pub fn address_type(self, t: &str) -> Self {
        self.field("addressType", json!(t))
    }

    /// A ready endpoint on `node`.
    pub fn ready_on(self, node: &str) -> Self {
        self.endpoint(node, Some(true))
    }

    /// One ready endpoint on each of these nodes, in order.
    pub fn ready_on_each<S: AsRef<str>>(self, nodes: impl IntoIterator<Item = S>) -> Self {
        nodes
            .into_iter()
            .fold(self, |slice, node| slice.ready_on(node.as_ref()))
    }

    /// An endpoint on `node` with `conditions.ready` (`None`: the condition is absent,
    /// which Kubernetes reads as ready).
    pub fn endpoint(self, node: &str, ready: Option<bool>) -> Self {
        let n = self.0["endpoints"].as_array().map_or(0, Vec::len);
        let address = if self.0["addressType"] == "IPv6" {
            format!("2001:db8:ff::{:x}", n + 1)
        } else {
            format!("10.244.0.{}", n + 1)
        };
        self.endpoint_at(&address, node, ready)
    }

    /// An endpoint with this address on `node`.
    pub fn endpoint_at(mut self, address: &str, node: &str, ready: Option<bool>) -> Self {
        push(
            &mut self.0,
            &["endpoints"],
            json!({"addresses": [address], "nodeName": node, "conditions": {"ready": ready}}),
        );
        self
    }
}

/// An L2Advertisement in `metallb-system` with an empty spec (every pool, every node).
pub fn l2_advertisement(name: &str) -> AdvertisementBuilder {
    advertisement("L2Advertisement", name)
}

/// A BGPAdvertisement in `metallb-system` with an empty spec (every pool, every peer).
pub fn bgp_advertisement(name: &str) -> AdvertisementBuilder {
    advertisement("BGPAdvertisement", name)
}

fn advertisement(kind: &str, name: &str) -> AdvertisementBuilder {
    AdvertisementBuilder(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": kind,
        "metadata": {"name": name, "namespace": METALLB_NS},
        "spec": {},
    }))
}

impl AdvertisementBuilder {
    /// `spec.ipAddressPools`.
    pub fn pools<S: AsRef<str>>(self, pools: impl IntoIterator<Item = S>) -> Self {
        self.spec("ipAddressPools", strings(pools))
    }

    /// `spec.interfaces` (L2Advertisement).
    pub fn interfaces<S: AsRef<str>>(self, interfaces: impl IntoIterator<Item = S>) -> Self {
        self.spec("interfaces", strings(interfaces))
    }

    /// One `spec.nodeSelectors` entry matching these labels.
    pub fn node_selector(mut self, labels: Value) -> Self {
        push(
            &mut self.0,
            &["spec", "nodeSelectors"],
            json!({"matchLabels": labels}),
        );
        self
    }

    /// Replaces the whole spec.
    pub fn with_spec(mut self, spec: Value) -> Self {
        self.0["spec"] = spec;
        self
    }
}

/// A BGPPeer (`metallb.io/v1beta2`) in `metallb-system`.
pub fn bgp_peer(name: &str, address: &str, my_asn: u32, peer_asn: u32) -> PeerBuilder {
    PeerBuilder(json!({
        "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
        "metadata": {"name": name, "namespace": METALLB_NS},
        "spec": {"myASN": my_asn, "peerASN": peer_asn, "peerAddress": address},
    }))
}

impl PeerBuilder {
    /// `spec.holdTime` (a duration such as `9s`).
    pub fn hold_time(self, d: &str) -> Self {
        self.spec("holdTime", json!(d))
    }

    /// Merges every key of `extra` into the spec; a `null` removes the key.
    pub fn spec_fields(mut self, extra: Value) -> Self {
        if let Value::Object(m) = extra {
            for (k, v) in m {
                self = self.spec(&k, v);
            }
        }
        self
    }
}

/// Any object: `apiVersion`, `kind`, `metadata.name` and, when given, `metadata.namespace`.
pub fn object(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> ObjectBuilder {
    let mut v = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
    if let Some(ns) = namespace {
        v["metadata"]["namespace"] = json!(ns);
    }
    ObjectBuilder(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Kind;

    #[test]
    fn node_reads_back_ready_with_addresses_and_labels() {
        let n = node("n1")
            .ready()
            .internal_ip("192.0.2.11")
            .internal_ip("2001:db8::11")
            .label("zone", "a");
        assert_eq!(
            n.json(),
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1", "labels": {"zone": "a"}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                           "addresses": [{"type": "InternalIP", "address": "192.0.2.11"},
                                         {"type": "InternalIP", "address": "2001:db8::11"}]}})
        );
        assert_eq!(n.object_ref(), ObjectRef::new(Kind::Node, None, "n1"));
    }

    #[test]
    fn yaml_reads_back_as_the_json() {
        let objects = [
            node("n1").ready().internal_ip("192.0.2.11").json(),
            pool("p", ["192.0.2.0/24", "2001:db8::/120"]).json(),
            service("web")
                .namespace("shop")
                .lb_ip("192.0.2.5")
                .ingress(["192.0.2.5"])
                .json(),
            endpoint_slice("web")
                .ready_on("n1")
                .endpoint("n2", None)
                .json(),
            l2_advertisement("l2")
                .pools(["p"])
                .node_selector(json!({"zone": "a"}))
                .json(),
            bgp_peer("r", "192.0.2.1", 64500, 64501)
                .hold_time("9s")
                .json(),
        ];
        for o in &objects {
            let text = to_yaml(o);
            assert_eq!(
                &serde_saphyr::from_str::<Value>(&text).unwrap(),
                o,
                "{text}"
            );
        }
        let stream = yaml_stream(&objects);
        assert_eq!(stream.matches("---\n").count(), objects.len());
    }

    #[test]
    fn snapshot_decodes_every_builder() {
        let snap = snapshot([
            node("n1").ready().internal_ip("192.0.2.11").json(),
            pool("p", ["192.0.2.0/24"]).json(),
            service("web").ingress(["192.0.2.1"]).json(),
            endpoint_slice("web").ready_on("n1").json(),
            l2_advertisement("l2").json(),
            bgp_advertisement("b").json(),
            bgp_peer("r", "192.0.2.1", 64500, 64501).json(),
        ]);
        assert!(snap.invalid.is_empty(), "{:?}", snap.invalid);
        assert_eq!(
            (
                snap.nodes.len(),
                snap.ip_address_pools.len(),
                snap.services.len(),
                snap.endpoint_slices.len(),
                snap.l2_advertisements.len(),
                snap.bgp_advertisements.len(),
                snap.bgp_peers.len()
            ),
            (1, 1, 1, 1, 1, 1, 1)
        );
    }

    /// The builders give the objects the suite's tests used to write out by hand.
    #[test]
    fn builders_match_the_hand_written_manifests() {
        let read = |text: &str| serde_saphyr::from_str::<Value>(text).unwrap();
        let cases = [
            (
                service("web").namespace("shop").json(),
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  \
                 type: LoadBalancer\n  ports:\n    - port: 80\n",
            ),
            (
                pool("pool-a", ["192.0.2.0/28"]).json(),
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: pool-a\n  \
                 namespace: metallb-system\nspec:\n  addresses:\n    - 192.0.2.0/28\n",
            ),
            (
                node("node1").json(),
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: node1\n",
            ),
            (
                node("node1")
                    .label("zone", "a")
                    .internal_ip("192.0.2.11")
                    .ready()
                    .json(),
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: node1\n  labels: {zone: a}\n\
                 status:\n  addresses: [{type: InternalIP, address: 192.0.2.11}]\n  \
                 conditions: [{type: Ready, status: \"True\"}]\n",
            ),
            (
                service("web")
                    .traffic_policy("Cluster")
                    .families_of(&["192.0.2.200"])
                    .ingress(["192.0.2.200"])
                    .json(),
                "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
                 spec: {type: LoadBalancer, externalTrafficPolicy: Cluster, ipFamilies: [IPv4], ports: [{port: 80}]}\n\
                 status: {loadBalancer: {ingress: [{ip: \"192.0.2.200\"}]}}\n",
            ),
            (
                endpoint_slice("web").ready_on("node1").json(),
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
                 addressType: IPv4\nendpoints: [{addresses: [\"10.244.0.1\"], nodeName: node1, conditions: {ready: true}}]\n",
            ),
            (
                l2_advertisement("l2").json(),
                "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2, namespace: metallb-system}\nspec: {}\n",
            ),
            (
                bgp_peer("router-v4", "192.0.2.1", 64512, 64513)
                    .hold_time("9s")
                    .json(),
                "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: router-v4, namespace: metallb-system}\n\
                 spec: {myASN: 64512, peerASN: 64513, peerAddress: \"192.0.2.1\", holdTime: 9s}\n",
            ),
        ];
        for (built, by_hand) in cases {
            assert_eq!(built, read(by_hand), "{by_hand}");
        }
    }

    #[test]
    fn ready_on_each_adds_one_ready_endpoint_per_node() {
        assert_eq!(
            endpoint_slice("web").ready_on_each(["n1", "n2"]),
            endpoint_slice("web").ready_on("n1").ready_on("n2")
        );
        assert_eq!(
            endpoint_slice("web").ready_on_each(Vec::<&str>::new()),
            endpoint_slice("web")
        );
        let eps = endpoint_slice("web").ready_on_each(["n1", "n2"]).json();
        assert_eq!(
            eps["endpoints"][1],
            json!({"addresses": ["10.244.0.2"], "nodeName": "n2", "conditions": {"ready": true}})
        );
    }

    #[test]
    fn pair_is_the_object_and_its_manifest() {
        let p = pool("p", ["192.0.2.0/24"]);
        assert_eq!(
            p.pair(),
            (
                ObjectRef::new(Kind::IPAddressPool, Some(METALLB_NS), "p"),
                p.json()
            )
        );
    }

    #[test]
    fn spec_null_removes_a_field() {
        let p = bgp_peer("r", "192.0.2.1", 64500, 64501)
            .spec_fields(json!({"peerASN": null, "holdTime": "3s"}));
        assert_eq!(
            p.json()["spec"],
            json!({"myASN": 64500, "peerAddress": "192.0.2.1", "holdTime": "3s"})
        );
    }
}
