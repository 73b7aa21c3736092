//! Outside input never panics the Multus model: any stdin, any annotation value, any NAD
//! configuration, any delegate result; what is refused is refused with an error that names
//! what it refuses.

use std::collections::BTreeMap;

use metalnet::model::core::{ObjectMeta, Pod};
use metalnet::model::{NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec};
use multus_shim::cni::CniError;
use multus_shim::multus::config::MultusConf;
use multus_shim::multus::networks::{NETWORKS_ANNOTATION, parse_networks};
use multus_shim::multus::plan::{Attachment, plan};
use multus_shim::multus::status::network_status_entries;
use proptest::prelude::*;
use serde_json::{Value, json};

/// JSON values up to a small depth, with keys and strings the model looks at.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("name".to_string()),
        Just("type".to_string()),
        Just("plugins".to_string()),
        Just("interface".to_string()),
        Just("ips".to_string()),
        Just("mac".to_string()),
        Just("default-route".to_string()),
        Just("cni-args".to_string()),
        Just("args".to_string()),
        Just("address".to_string()),
        Just("interfaces".to_string()),
        Just("routes".to_string()),
        Just("dst".to_string()),
        Just("sandbox".to_string()),
        Just("capabilities".to_string()),
        "[a-z-]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        Just(Value::from("192.0.2.1/24")),
        Just(Value::from("0.0.0.0/0")),
        Just(Value::from("02:00:00:00:00:01")),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn pod(annotation: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some("p".into()),
            annotations: Some(BTreeMap::from([(
                NETWORKS_ANNOTATION.to_string(),
                annotation.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_stdin(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Err(e) = MultusConf::parse(&bytes) {
            let c = CniError::from(e);
            prop_assert!(c.code == 6 || c.code == 7);
            prop_assert!(!c.msg.is_empty());
        }
    }

    #[test]
    fn any_json_conf(v in json_value()) {
        if let Err(e) = MultusConf::parse(v.to_string().as_bytes()) {
            prop_assert_eq!(CniError::from(e).code, 7);
        }
    }

    #[test]
    fn any_annotation_text(s in "[ -~]{0,60}") {
        if let Err(e) = parse_networks(NETWORKS_ANNOTATION, &s, "default") {
            prop_assert!(e.to_string().contains(NETWORKS_ANNOTATION));
        }
    }

    #[test]
    fn any_annotation_json(v in prop::collection::vec(json_value(), 0..4)) {
        let text = Value::Array(v).to_string();
        let _ = parse_networks(NETWORKS_ANNOTATION, &text, "default");
    }

    #[test]
    fn any_nad_config(config in json_value(), sel in json_value()) {
        let conf = MultusConf::parse(br#"{"cniVersion":"1.0.0","delegates":[{"name":"podnet","type":"bridge"}]}"#).unwrap();
        let nads = vec![NetworkAttachmentDefinition {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("n".into()),
                ..Default::default()
            },
            spec: NetworkAttachmentDefinitionSpec { config: config.to_string() },
        }];
        let mut element = match sel {
            Value::Object(m) => m,
            _ => Default::default(),
        };
        element.insert("name".into(), "n".into());
        let annotation = json!([element]).to_string();
        let att = Attachment { ifname: "eth0".into(), ..Default::default() };
        if let Err(e) = plan(&conf, Some(&pod(&annotation)), &att, &nads) {
            let msg = e.to_string();
            let c = CniError::from(e);
            prop_assert!([5, 7, 11].contains(&c.code), "{}", msg);
        }
    }

    #[test]
    fn any_result(v in json_value(), master in any::<bool>()) {
        for e in network_status_entries("ns/n", master, &v, None) {
            let text = e.to_go_json();
            prop_assert!(serde_json::from_str::<Value>(&text).is_ok(), "{}", text);
        }
    }
}
