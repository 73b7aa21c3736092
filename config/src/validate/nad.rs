//! NetworkAttachmentDefinition: the CNI configuration Multus will read.

use super::{Problem, object_ref};
use crate::model::NetworkAttachmentDefinition;
use crate::state::{Kind, ObjectRef};

/// Checks a NAD's `spec.config` as Multus will read it: empty (Multus then reads the CNI
/// file named like the object) or a JSON object with a `cniVersion` string and either a
/// `type` (one plugin) or a non-empty `plugins` list (a conflist, which also needs a `name`)
/// whose entries each have a `type`.
pub fn check_cni_config(config: &str) -> Result<(), String> {
    if config.trim().is_empty() {
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_str(config).map_err(|e| {
        format!(
            "not valid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        )
    })?;
    let obj = value
        .as_object()
        .ok_or("must be a JSON object".to_string())?;
    match obj.get("cniVersion") {
        Some(serde_json::Value::String(_)) => {}
        Some(_) => return Err("\"cniVersion\" must be a string".into()),
        None => return Err("\"cniVersion\" is missing".into()),
    }
    let is_string = |v: Option<&serde_json::Value>| v.is_some_and(|v| v.is_string());
    if let Some(plugins) = obj.get("plugins") {
        let list = plugins
            .as_array()
            .ok_or("\"plugins\" must be a list".to_string())?;
        if list.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        if !is_string(obj.get("name")) {
            return Err("a configuration list (with \"plugins\") needs a \"name\" string".into());
        }
        for (i, p) in list.iter().enumerate() {
            if !is_string(p.get("type")) {
                return Err(format!("plugins[{i}] has no \"type\" string"));
            }
        }
        return Ok(());
    }
    if !is_string(obj.get("type")) {
        return Err("needs a \"type\" string (one plugin) or a \"plugins\" list".into());
    }
    Ok(())
}

pub(super) fn check_nad(object: &ObjectRef, nad: &NetworkAttachmentDefinition) -> Vec<Problem> {
    match check_cni_config(&nad.spec.config) {
        Ok(()) => Vec::new(),
        Err(e) => vec![Problem::error(object, "spec.config", e)],
    }
}

/// Checks one NetworkAttachmentDefinition (for the Multus shim, which skips bad ones).
pub fn validate_nad(nad: &NetworkAttachmentDefinition) -> Vec<Problem> {
    check_nad(
        &object_ref(Kind::NetworkAttachmentDefinition, &nad.metadata),
        nad,
    )
}

#[cfg(test)]
mod tests {
    use crate::validate::test_util::*;

    #[test]
    fn nad_config_rules() {
        const NAD: &str = "NetworkAttachmentDefinition/metallb-system/n";
        assert_clean(&[nad("n", "")]);
        assert_clean(&[nad("n", r#"{"cniVersion": "0.3.1", "type": "macvlan"}"#)]);
        assert_clean(&[nad(
            "n",
            r#"{"cniVersion": "1.0.0", "name": "l", "plugins": [{"type": "bridge"}]}"#,
        )]);
        for (config, reason) in [
            (
                "{\n  \"cniVersion\": \"0.3.1\",\n  \"type\": macvlan\n}",
                "not valid JSON at line 3 column 11",
            ),
            ("[1, 2]", "must be a JSON object"),
            (r#"{"type": "macvlan"}"#, "\"cniVersion\" is missing"),
            (
                r#"{"cniVersion": 1, "type": "macvlan"}"#,
                "\"cniVersion\" must be a string",
            ),
            (r#"{"cniVersion": "0.3.1"}"#, "needs a \"type\" string"),
            (
                r#"{"cniVersion": "0.3.1", "name": "l", "plugins": []}"#,
                "\"plugins\" is empty",
            ),
            (
                r#"{"cniVersion": "0.3.1", "name": "l", "plugins": {}}"#,
                "\"plugins\" must be a list",
            ),
            (
                r#"{"cniVersion": "0.3.1", "name": "l", "plugins": [{"type": "a"}, {"mtu": 1}]}"#,
                "plugins[1] has no \"type\" string",
            ),
            (
                r#"{"cniVersion": "0.3.1", "plugins": [{"type": "a"}]}"#,
                "needs a \"name\" string",
            ),
        ] {
            assert_only_error(&[nad("n", config)], NAD, "spec.config", reason);
        }
    }
}
