//! Turning a Kubernetes Service into a [`ServiceRequest`], as MetalLB's controller reads it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::error::AllocError;
use super::types::{FamilyRequest, IpFamily, Port, ServiceKey, ServiceRequest};

pub const ANNOTATION_ADDRESS_POOL: &str = "metallb.io/address-pool";
pub const ANNOTATION_LOAD_BALANCER_IPS: &str = "metallb.io/loadBalancerIPs";
pub const ANNOTATION_ALLOW_SHARED_IP: &str = "metallb.io/allow-shared-ip";
pub const ANNOTATION_IP_ALLOCATED_FROM_POOL: &str = "metallb.io/ip-allocated-from-pool";
pub const DEPRECATED_ANNOTATION_ADDRESS_POOL: &str = "metallb.universe.tf/address-pool";
pub const DEPRECATED_ANNOTATION_LOAD_BALANCER_IPS: &str = "metallb.universe.tf/loadBalancerIPs";
pub const DEPRECATED_ANNOTATION_ALLOW_SHARED_IP: &str = "metallb.universe.tf/allow-shared-ip";
pub const DEPRECATED_ANNOTATION_IP_ALLOCATED_FROM_POOL: &str =
    "metallb.universe.tf/ip-allocated-from-pool";

/// The stable annotation wins when present (even if empty), else the deprecated one.
fn annotation<'a>(
    annotations: Option<&'a BTreeMap<String, String>>,
    stable: &'static str,
    deprecated: &'static str,
) -> Option<(&'static str, &'a str)> {
    let a = annotations?;
    a.get(stable)
        .map(|v| (stable, v.as_str()))
        .or_else(|| a.get(deprecated).map(|v| (deprecated, v.as_str())))
}

/// Parse an address as Go's `net.ParseIP` would classify it: IPv4-mapped IPv6 is IPv4.
pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

impl ServiceRequest {
    /// Read a Service (type LoadBalancer) and its namespace's labels.
    pub fn from_service(
        svc: &Service,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<Self, AllocError> {
        let meta = &svc.metadata;
        let key = ServiceKey::new(
            meta.namespace.clone().unwrap_or_else(|| "default".into()),
            meta.name.clone().unwrap_or_default(),
        );
        let spec = svc.spec.clone().unwrap_or_default();
        let annotations = meta.annotations.as_ref();

        let families = family_request(
            spec.ip_family_policy.as_deref(),
            spec.ip_families.as_deref().unwrap_or_default(),
            spec.cluster_ips.as_deref().unwrap_or_default(),
            spec.cluster_ip.as_deref(),
        )?;

        let lb_ips_annotation = annotation(
            annotations,
            ANNOTATION_LOAD_BALANCER_IPS,
            DEPRECATED_ANNOTATION_LOAD_BALANCER_IPS,
        )
        .filter(|(_, v)| !v.is_empty());
        let spec_ip = spec.load_balancer_ip.as_deref().filter(|v| !v.is_empty());
        let requested_ips = match (lb_ips_annotation, spec_ip) {
            (Some((name, _)), Some(_)) => {
                return Err(AllocError::BothAnnotationAndSpec { annotation: name });
            }
            (Some((name, value)), None) => value
                .split(',')
                .map(|part| {
                    parse_ip(part).ok_or_else(|| AllocError::InvalidAddress {
                        field: format!("metadata.annotations[{name}]"),
                        value: part.trim().to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            (None, Some(value)) => {
                vec![parse_ip(value).ok_or_else(|| AllocError::InvalidAddress {
                    field: "spec.loadBalancerIP".into(),
                    value: value.to_string(),
                })?]
            }
            (None, None) => Vec::new(),
        };

        let requested_pool = annotation(
            annotations,
            ANNOTATION_ADDRESS_POOL,
            DEPRECATED_ANNOTATION_ADDRESS_POOL,
        )
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty());
        let sharing_key = annotation(
            annotations,
            ANNOTATION_ALLOW_SHARED_IP,
            DEPRECATED_ANNOTATION_ALLOW_SHARED_IP,
        )
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();

        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| Port::new(p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
            .collect();

        // eTP Local: only Services selecting the same pods may share (their traffic must land
        // on the same nodes); MetalLB uses the selector's `k=v,…` form as the key.
        let backend_key = if spec.external_traffic_policy.as_deref() == Some("Local") {
            spec.selector
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            String::new()
        };

        Ok(ServiceRequest {
            key,
            labels: meta.labels.clone().unwrap_or_default(),
            namespace_labels: namespace_labels.clone(),
            families,
            requested_ips,
            requested_pool,
            sharing_key,
            ports,
            backend_key,
        })
    }
}

/// MetalLB: the Service's family comes from `spec.clusterIPs` (else `spec.clusterIP`); one
/// address → single-stack, two of different families → dual-stack. The policy then decides
/// between RequireDual and PreferDual; `spec.ipFamilies[0]` is the preferred family.
///
/// A Service without cluster IPs (a manifest in a state directory: no API server allocated
/// them) is read as the API server would allocate them on a dual-stack cluster:
/// `spec.ipFamilies` when given, else IPv4, and both families for PreferDualStack and
/// RequireDualStack. (MetalLB refuses such Services; on Kubernetes they do not occur.)
pub fn family_request(
    policy: Option<&str>,
    ip_families: &[String],
    cluster_ips: &[String],
    cluster_ip: Option<&str>,
) -> Result<FamilyRequest, AllocError> {
    let ips: Vec<String> = if !cluster_ips.is_empty() {
        cluster_ips.to_vec()
    } else {
        match cluster_ip {
            Some(ip) if !ip.is_empty() => vec![ip.to_string()],
            _ => return families_without_cluster_ips(policy, ip_families),
        }
    };
    let invalid = |reason: &str| AllocError::InvalidClusterIps {
        value: ips.clone(),
        reason: reason.to_string(),
    };
    let parsed: Vec<IpAddr> = ips
        .iter()
        .map(|s| parse_ip(s).ok_or_else(|| invalid("not an IP address")))
        .collect::<Result<_, _>>()?;
    let dual = match parsed.as_slice() {
        [_] => false,
        [a, b] if IpFamily::of(a) != IpFamily::of(b) => true,
        [_, _] => return Err(invalid("two addresses of the same family")),
        _ => return Err(invalid("expected one or two addresses")),
    };
    let first = IpFamily::of(&parsed[0]);
    let primary = match ip_families.first().map(String::as_str) {
        Some("IPv6") => IpFamily::V6,
        Some("IPv4") => IpFamily::V4,
        _ => first,
    };
    match policy.unwrap_or("SingleStack") {
        "SingleStack" | "PreferDualStack" | "RequireDualStack" => {}
        other => {
            return Err(AllocError::InvalidFamilyPolicy {
                value: other.to_string(),
            });
        }
    }
    Ok(match (dual, policy.unwrap_or("SingleStack")) {
        (false, _) => FamilyRequest::Single(first),
        (true, "RequireDualStack") => FamilyRequest::RequireDual,
        (true, "PreferDualStack") => FamilyRequest::PreferDual { primary },
        // Kubernetes never gives a SingleStack Service two cluster IPs.
        (true, _) => FamilyRequest::Single(primary),
    })
}

/// See [`family_request`]: families from `spec.ipFamilies` and the policy alone.
fn families_without_cluster_ips(
    policy: Option<&str>,
    ip_families: &[String],
) -> Result<FamilyRequest, AllocError> {
    let parse = |s: &String| match s.as_str() {
        "IPv4" => Ok(IpFamily::V4),
        "IPv6" => Ok(IpFamily::V6),
        other => Err(AllocError::InvalidClusterIps {
            value: ip_families.to_vec(),
            reason: format!("spec.ipFamilies: {other:?} is not IPv4 or IPv6"),
        }),
    };
    let families: Vec<IpFamily> = ip_families.iter().map(parse).collect::<Result<_, _>>()?;
    let primary = families.first().copied().unwrap_or(IpFamily::V4);
    match policy.unwrap_or("SingleStack") {
        "SingleStack" => Ok(FamilyRequest::Single(primary)),
        "PreferDualStack" if families.len() == 1 => Ok(FamilyRequest::Single(primary)),
        "PreferDualStack" => Ok(FamilyRequest::PreferDual { primary }),
        "RequireDualStack" => Ok(FamilyRequest::RequireDual),
        other => Err(AllocError::InvalidFamilyPolicy {
            value: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(annotations: &[(&str, &str)], spec: ServiceSpec) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("web".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn v4_spec() -> ServiceSpec {
        ServiceSpec {
            type_: Some("LoadBalancer".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn reads_annotations_ports_and_backend() {
        let mut spec = v4_spec();
        spec.ports = Some(vec![
            ServicePort {
                port: 80,
                ..Default::default()
            },
            ServicePort {
                port: 53,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
        ]);
        spec.external_traffic_policy = Some("Local".into());
        spec.selector = Some(BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]));
        let s = svc(
            &[
                ("metallb.universe.tf/address-pool", "old"),
                ("metallb.io/address-pool", "new"),
                ("metallb.universe.tf/allow-shared-ip", "k"),
                ("metallb.io/loadBalancerIPs", "192.0.2.5, 2001:db8::5"),
            ],
            spec,
        );
        let r = ServiceRequest::from_service(&s, &BTreeMap::new()).unwrap();
        assert_eq!(r.key.to_string(), "ns/web");
        assert_eq!(r.requested_pool.as_deref(), Some("new"));
        assert_eq!(r.sharing_key, "k");
        assert_eq!(
            r.requested_ips,
            vec![
                "192.0.2.5".parse::<IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
        assert_eq!(r.ports, vec![Port::new("TCP", 80), Port::new("UDP", 53)]);
        assert_eq!(r.backend_key, "a=1,b=2");
    }

    #[test]
    fn both_annotation_and_spec_is_an_error() {
        let mut spec = v4_spec();
        spec.load_balancer_ip = Some("192.0.2.1".into());
        let s = svc(&[("metallb.io/loadBalancerIPs", "192.0.2.2")], spec);
        let err = ServiceRequest::from_service(&s, &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(err, AllocError::BothAnnotationAndSpec { .. }),
            "{err}"
        );
    }

    #[test]
    fn spec_load_balancer_ip_and_bad_addresses() {
        let mut spec = v4_spec();
        spec.load_balancer_ip = Some("192.0.2.1".into());
        let r = ServiceRequest::from_service(&svc(&[], spec), &BTreeMap::new()).unwrap();
        assert_eq!(
            r.requested_ips,
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        let s = svc(
            &[("metallb.io/loadBalancerIPs", "192.0.2.1,nope")],
            v4_spec(),
        );
        let err = ServiceRequest::from_service(&s, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata.annotations[metallb.io/loadBalancerIPs]: \"nope\" is not an IP address"
        );
    }

    #[test]
    fn families_follow_cluster_ips_and_policy() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let dual = s(&["10.96.0.1", "fd00::1"]);
        assert_eq!(
            family_request(None, &[], &s(&["fd00::1"]), None).unwrap(),
            FamilyRequest::Single(IpFamily::V6)
        );
        assert_eq!(
            family_request(None, &[], &[], Some("10.0.0.1")).unwrap(),
            FamilyRequest::Single(IpFamily::V4)
        );
        assert_eq!(
            family_request(Some("RequireDualStack"), &[], &dual, None).unwrap(),
            FamilyRequest::RequireDual
        );
        assert_eq!(
            family_request(Some("PreferDualStack"), &s(&["IPv6", "IPv4"]), &dual, None).unwrap(),
            FamilyRequest::PreferDual {
                primary: IpFamily::V6
            }
        );
        // PreferDualStack on a single-stack cluster: one address of the cluster's family.
        assert_eq!(
            family_request(Some("PreferDualStack"), &[], &s(&["10.0.0.1"]), None).unwrap(),
            FamilyRequest::Single(IpFamily::V4)
        );
        // No cluster IPs (a state directory): families from ipFamilies and the policy.
        assert_eq!(
            family_request(None, &[], &[], None).unwrap(),
            FamilyRequest::Single(IpFamily::V4)
        );
        assert_eq!(
            family_request(None, &s(&["IPv6"]), &[], Some("")).unwrap(),
            FamilyRequest::Single(IpFamily::V6)
        );
        assert_eq!(
            family_request(Some("RequireDualStack"), &[], &[], None).unwrap(),
            FamilyRequest::RequireDual
        );
        assert_eq!(
            family_request(Some("PreferDualStack"), &s(&["IPv6", "IPv4"]), &[], None).unwrap(),
            FamilyRequest::PreferDual {
                primary: IpFamily::V6
            }
        );
        assert!(matches!(
            family_request(None, &[], &s(&["None"]), None),
            Err(AllocError::InvalidClusterIps { .. })
        ));
    }
}
