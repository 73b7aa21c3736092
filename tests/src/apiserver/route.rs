//! From a request to what it names: the path parsed into kind, namespace and name, the query
//! string, and the label and field selectors a list or watch is filtered by.

use metalnet::state::Kind;
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::Reply;
use super::store::{Key, has_status_subresource};

/// Where a request goes: a kind's collection, one object, or one object's subresource.
pub(super) struct Route {
    pub(super) kind: Kind,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) subresource: Option<String>,
}

pub(super) fn parse_route(path: &str) -> Result<Route, Reply> {
    let not_found = || {
        Reply::error(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(ns.to_string()), [&[*plural][..], rest].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.group() == group && k.version() == version && k.plural() == plural)
        .ok_or_else(not_found)?;
    // A namespaced object is only addressed through its namespace; a cluster-scoped kind
    // never is.
    if (namespace.is_some() && !kind.namespaced())
        || (namespace.is_none() && kind.namespaced() && name.is_some())
    {
        return Err(not_found());
    }
    Ok(Route {
        kind,
        namespace,
        name,
        subresource,
    })
}

pub(super) fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn route_desc(route: &Route) -> String {
    let mut s = route.kind.plural().to_string();
    if let Some(n) = &route.name {
        s = format!("{s}/{n}");
    }
    if let Some(sub) = &route.subresource {
        s = format!("{s}/{sub}");
    }
    s
}

pub(super) fn route_key(route: &Route, name: &str) -> Key {
    Key {
        kind: route.kind,
        namespace: route.namespace.clone(),
        name: name.to_string(),
    }
}

pub(super) fn check_subresource(route: &Route) -> Result<bool, Reply> {
    match route.subresource.as_deref() {
        None => Ok(false),
        Some("status") if has_status_subresource(route.kind) => Ok(true),
        Some(sub) => Err(Reply::error(
            404,
            "NotFound",
            format!("{} has no subresource {sub}", route.kind.plural()),
        )),
    }
}

/// A label selector of equality and existence terms (`a=b`, `a==b`, `a!=b`, `a`, `!a`).
pub(super) fn label_selector_matches(selector: &str, object: &Value) -> Result<bool, Reply> {
    let labels = &object["metadata"]["labels"];
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
            return Err(Reply::error(
                400,
                "BadRequest",
                format!(
                    "label selector term {term:?}: set-based selectors are not supported by the stand-in"
                ),
            ));
        }
        let ok = if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else {
            labels.get(term).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn field_selector_matches(selector: &str, object: &Value) -> Result<bool, Reply> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, want, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, true)
        } else {
            return Err(Reply::error(
                400,
                "BadRequest",
                format!("field selector {term:?}"),
            ));
        };
        let have = match field.trim() {
            "metadata.name" => object["metadata"]["name"].as_str(),
            "metadata.namespace" => object["metadata"]["namespace"].as_str(),
            other => {
                return Err(Reply::error(
                    400,
                    "BadRequest",
                    format!("field selector on {other:?} is not supported by the stand-in"),
                ));
            }
        };
        if (have == Some(want.trim())) != equal {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Which objects of the route's kind a list or watch selects.
pub(super) struct Filter {
    pub(super) kind: Kind,
    pub(super) namespace: Option<String>,
    pub(super) labels: Option<String>,
    pub(super) fields: Option<String>,
}

impl Filter {
    pub(super) fn new(route: &Route, params: &BTreeMap<String, String>) -> Result<Filter, Reply> {
        let f = Filter {
            kind: route.kind,
            namespace: route.namespace.clone(),
            labels: params.get("labelSelector").cloned(),
            fields: params.get("fieldSelector").cloned(),
        };
        // Reject selectors we cannot evaluate now rather than on the first object.
        if let Some(sel) = &f.labels {
            label_selector_matches(sel, &json!({}))?;
        }
        if let Some(sel) = &f.fields {
            field_selector_matches(sel, &json!({}))?;
        }
        Ok(f)
    }

    pub(super) fn matches(&self, key: &Key, object: &Value) -> Result<bool, Reply> {
        if key.kind != self.kind {
            return Ok(false);
        }
        if self.namespace.is_some() && key.namespace != self.namespace {
            return Ok(false);
        }
        if let Some(s) = &self.labels
            && !label_selector_matches(s, object)?
        {
            return Ok(false);
        }
        if let Some(s) = &self.fields
            && !field_selector_matches(s, object)?
        {
            return Ok(false);
        }
        Ok(true)
    }
}
