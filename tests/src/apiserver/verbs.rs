//! The verbs on stored objects: list, get, create, replace, patch and delete, each answering
//! with the object or a `Status` as the real server does.

use bytes::Bytes;
use metalnet::state::Kind;
use metalnet::state::merge_patch;
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::route::{Filter, Route, check_subresource, route_key};
use super::store::{has_status_subresource, is_builtin};
use super::{Reply, Shared};

pub(super) fn parse_json(body: &Bytes) -> Result<Value, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, "BadRequest", format!("the body is not JSON: {e}")))
}

pub(super) fn list(
    shared: &Shared,
    route: &Route,
    params: &BTreeMap<String, String>,
) -> Result<Reply, Reply> {
    let filter = Filter::new(route, params)?;
    let store = shared.store.lock().unwrap();
    let mut items = Vec::new();
    for (key, object) in &store.objects {
        if filter.matches(key, object)? {
            let mut item = object.clone();
            if is_builtin(route.kind)
                && let Some(m) = item.as_object_mut()
            {
                m.remove("apiVersion");
                m.remove("kind");
            }
            items.push(item);
        }
    }
    Ok(Reply::ok(
        200,
        json!({
            "apiVersion": route.kind.api_version(),
            "kind": format!("{}List", route.kind.name()),
            "metadata": { "resourceVersion": store.rv.to_string() },
            "items": items,
        }),
    ))
}

pub(super) fn get(shared: &Shared, route: &Route, name: &str) -> Result<Reply, Reply> {
    check_subresource(route)?;
    let store = shared.store.lock().unwrap();
    match store.objects.get(&route_key(route, name)) {
        Some(o) => Ok(Reply::ok(200, o.clone())),
        None => Err(not_found(route, name)),
    }
}

pub(super) fn not_found(route: &Route, name: &str) -> Reply {
    Reply::for_object(
        404,
        "NotFound",
        route,
        name,
        format!("{} \"{name}\" not found", route.kind.plural()),
    )
}

/// Checks the body names the route's kind, object and namespace.
pub(super) fn check_identity(route: &Route, name: Option<&str>, body: &Value) -> Result<(), Reply> {
    if !body.is_object() {
        return Err(Reply::error(
            400,
            "BadRequest",
            "the body is not an object".into(),
        ));
    }
    if let Some(k) = body["kind"].as_str()
        && k != route.kind.name()
    {
        return Err(Reply::error(
            400,
            "BadRequest",
            format!(
                "kind {k} does not match the resource {}",
                route.kind.plural()
            ),
        ));
    }
    if let Some(av) = body["apiVersion"].as_str()
        && av != route.kind.api_version()
    {
        return Err(Reply::error(
            400,
            "BadRequest",
            format!("apiVersion {av} is not served for {}", route.kind.plural()),
        ));
    }
    if let (Some(want), Some(have)) = (name, body["metadata"]["name"].as_str())
        && want != have
    {
        return Err(Reply::error(
            400,
            "BadRequest",
            format!("the name of the object ({have}) does not match the name on the URL ({want})"),
        ));
    }
    if let (Some(want), Some(have)) = (&route.namespace, body["metadata"]["namespace"].as_str())
        && want != have
    {
        return Err(Reply::error(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    Ok(())
}

pub(super) fn create(shared: &Shared, route: &Route, mut body: Value) -> Result<Reply, Reply> {
    if route.subresource.is_some() {
        return Err(Reply::error(
            405,
            "MethodNotAllowed",
            "create on a subresource".into(),
        ));
    }
    check_identity(route, None, &body)?;
    if route.kind.namespaced() && route.namespace.is_none() {
        return Err(Reply::error(
            404,
            "NotFound",
            "namespaced objects are created in a namespace path".into(),
        ));
    }
    let mut store = shared.store.lock().unwrap();
    let name = match (
        body["metadata"]["name"].as_str(),
        body["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => {
            format!("{prefix}{:05x}", (store.rv ^ shared.instance) & 0xfffff)
        }
        _ => {
            return Err(Reply::error(
                422,
                "Invalid",
                format!(
                    "{} is invalid: metadata.name: Required value: name or generateName is required",
                    route.kind.name()
                ),
            ));
        }
    };
    let key = route_key(route, &name);
    if store.objects.contains_key(&key) {
        return Err(Reply::for_object(
            409,
            "AlreadyExists",
            route,
            &name,
            format!("{} \"{name}\" already exists", route.kind.plural()),
        ));
    }
    if has_status_subresource(route.kind)
        && let Some(m) = body.as_object_mut()
    {
        m.remove("status");
    }
    let stored = store.write(shared, &key, body);
    Ok(Reply::ok(201, stored))
}

/// The object a main-resource or status write leaves: status writes change only `.status`
/// (and, for a Pod, its labels and annotations too: the real server's pod status strategy
/// resets only the spec, the owner references and the deletion timestamp, which is how
/// Multus writes network-status through `pods/status`); main writes keep the stored `.status`
/// of kinds with the subresource.
pub(super) fn merge_write(route: &Route, old: &Value, mut new: Value, status_write: bool) -> Value {
    if status_write {
        let mut result = old.clone();
        match new.get("status") {
            Some(s) => result["status"] = s.clone(),
            None => {
                if let Some(m) = result.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if route.kind == Kind::Pod {
            for field in ["annotations", "labels"] {
                let given = new["metadata"].get(field).cloned();
                if let Some(meta) = result["metadata"].as_object_mut() {
                    match given {
                        Some(v) if !v.is_null() => {
                            meta.insert(field.into(), v);
                        }
                        _ => {
                            meta.remove(field);
                        }
                    }
                }
            }
        }
        result
    } else {
        if has_status_subresource(route.kind)
            && let Some(m) = new.as_object_mut()
        {
            match old.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
        new
    }
}

pub(super) fn conflict(route: &Route, name: &str) -> Reply {
    Reply::for_object(
        409,
        "Conflict",
        route,
        name,
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            route.kind.plural()
        ),
    )
}

pub(super) fn check_precondition(
    route: &Route,
    name: &str,
    old: &Value,
    body: &Value,
) -> Result<(), Reply> {
    match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            Err(conflict(route, name))
        }
        _ => Ok(()),
    }
}

pub(super) fn replace(
    shared: &Shared,
    route: &Route,
    name: &str,
    body: Value,
) -> Result<Reply, Reply> {
    let status_write = check_subresource(route)?;
    check_identity(route, Some(name), &body)?;
    let key = route_key(route, name);
    let mut store = shared.store.lock().unwrap();
    let Some(old) = store.objects.get(&key).cloned() else {
        return Err(not_found(route, name));
    };
    check_precondition(route, name, &old, &body)?;
    let new = merge_write(route, &old, body, status_write);
    let stored = store.write(shared, &key, new);
    Ok(Reply::ok(200, stored))
}

pub(super) fn patch(
    shared: &Shared,
    route: &Route,
    name: &str,
    params: &BTreeMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Result<Reply, Reply> {
    let status_write = check_subresource(route)?;
    let is_apply = match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        "application/apply-patch+yaml" => true,
        other => {
            return Err(Reply::error(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            ));
        }
    };
    let patch_value: Value = if is_apply {
        if params.get("fieldManager").is_none_or(String::is_empty) {
            return Err(Reply::error(
                400,
                "BadRequest",
                "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests"
                    .into(),
            ));
        }
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                let text = std::str::from_utf8(body).map_err(|e| {
                    Reply::error(400, "BadRequest", format!("the body is not UTF-8: {e}"))
                })?;
                serde_saphyr::from_str(text).map_err(|e| {
                    Reply::error(400, "BadRequest", format!("the body is not YAML: {e}"))
                })?
            }
        }
    } else {
        parse_json(body)?
    };
    if is_apply {
        check_identity(route, Some(name), &patch_value)?;
    } else if !patch_value.is_object() {
        return Err(Reply::error(
            400,
            "BadRequest",
            "a merge patch must be an object".into(),
        ));
    }
    let key = route_key(route, name);
    let mut store = shared.store.lock().unwrap();
    let old = store.objects.get(&key).cloned();
    let Some(old) = old else {
        if is_apply && !status_write {
            // Server-side apply creates what does not exist.
            let mut new = patch_value;
            if has_status_subresource(route.kind)
                && let Some(m) = new.as_object_mut()
            {
                m.remove("status");
            }
            let stored = store.write(shared, &key, new);
            return Ok(Reply::ok(201, stored));
        }
        return Err(not_found(route, name));
    };
    check_precondition(route, name, &old, &patch_value)?;
    let mut patched = old.clone();
    merge_patch(&mut patched, &patch_value);
    let new = merge_write(route, &old, patched, status_write);
    let stored = store.write(shared, &key, new);
    Ok(Reply::ok(200, stored))
}

pub(super) fn delete(shared: &Shared, route: &Route, name: &str) -> Result<Reply, Reply> {
    if route.subresource.is_some() {
        return Err(Reply::error(
            405,
            "MethodNotAllowed",
            "delete on a subresource".into(),
        ));
    }
    let key = route_key(route, name);
    let mut store = shared.store.lock().unwrap();
    match store.remove(shared, &key) {
        Some(o) => Ok(Reply::ok(200, o)),
        None => Err(not_found(route, name)),
    }
}
