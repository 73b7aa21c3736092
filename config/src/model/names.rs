//! Kubernetes' rules for object names and namespaces, applied when objects are read from
//! either backend, and the escaping of names in messages.
//!
//! The API server refuses names its rules reject; the state directory has no API server, so
//! the same rules are applied here: `..`, `a/b`, upper case, a newline or a namespace
//! `_cluster` make the object invalid instead of reaching the components.

use std::borrow::Cow;

use super::{Kind, ObjectRef};

/// What is wrong with an object's name or namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameError {
    /// `metadata.name` or `metadata.namespace`.
    pub field: &'static str,
    pub message: String,
}

/// Checks `obj`'s name and namespace against the rules the API server applies to its kind.
pub fn check_names(obj: &ObjectRef) -> Result<(), NameError> {
    if let Some(ns) = &obj.namespace {
        check(ns, Rule::Label).map_err(|message| NameError {
            field: "metadata.namespace",
            message,
        })?;
    }
    let rule = match obj.kind {
        Kind::Service => Rule::Label1035,
        Kind::Namespace => Rule::Label,
        _ => Rule::Subdomain,
    };
    check(&obj.name, rule).map_err(|message| NameError {
        field: "metadata.name",
        message,
    })
}

#[derive(Clone, Copy)]
enum Rule {
    /// RFC 1123 label: namespaces, Namespace names.
    Label,
    /// RFC 1035 label: Service names (they become DNS names).
    Label1035,
    /// RFC 1123 subdomain: most other objects.
    Subdomain,
}

fn check(value: &str, rule: Rule) -> Result<(), String> {
    let shown = escape(value);
    let (max, ok, what) = match rule {
        Rule::Label => (
            63,
            is_label(value),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character",
        ),
        Rule::Label1035 => (
            63,
            is_label(value) && value.starts_with(|c: char| c.is_ascii_lowercase()),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start \
             with an alphabetic character, and end with an alphanumeric character",
        ),
        Rule::Subdomain => (
            253,
            value.split('.').all(is_label),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character",
        ),
    };
    if value.len() > max {
        return Err(format!(
            "\"{shown}\": must be no more than {max} characters"
        ));
    }
    if !ok {
        return Err(format!("\"{shown}\": {what}"));
    }
    Ok(())
}

fn is_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

/// `s` with control characters (newlines among them) and quotes escaped, so that a name
/// read from outside cannot forge a log line; unchanged when there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        Cow::Owned(s.escape_debug().to_string())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ref(kind: Kind, ns: Option<&str>, name: &str) -> Result<(), NameError> {
        check_names(&ObjectRef {
            kind,
            namespace: ns.map(str::to_string),
            name: name.to_string(),
        })
    }

    #[test]
    fn names_kubernetes_rejects_are_rejected() {
        for (kind, ns, name, field) in [
            (
                Kind::IPAddressPool,
                Some("metallb-system"),
                "..",
                "metadata.name",
            ),
            (
                Kind::IPAddressPool,
                Some("metallb-system"),
                "a/b",
                "metadata.name",
            ),
            (Kind::Service, Some("default"), "Web", "metadata.name"),
            (
                Kind::Service,
                Some("default"),
                "web\nINFO forged",
                "metadata.name",
            ),
            (Kind::Service, Some("default"), "1web", "metadata.name"),
            (Kind::Service, Some("default"), "web.a", "metadata.name"),
            (Kind::Service, Some("_cluster"), "web", "metadata.namespace"),
            (Kind::Node, None, "-n1", "metadata.name"),
            (Kind::Node, None, "", "metadata.name"),
            (Kind::Namespace, None, "a.b", "metadata.name"),
            (Kind::Secret, Some("a.b"), "s", "metadata.namespace"),
        ] {
            let err = check_ref(kind, ns, name).expect_err(name);
            assert_eq!(err.field, field, "{name:?}");
            assert!(!err.message.contains('\n'), "{}", err.message);
        }
        let long = "a".repeat(64);
        let err = check_ref(Kind::Service, Some("default"), &long).unwrap_err();
        assert!(err.message.contains("no more than 63"), "{}", err.message);
        for (kind, ns, name) in [
            (Kind::Service, Some("default"), "web-1"),
            (Kind::Node, None, "node-1.example.com"),
            (Kind::IPAddressPool, Some("metallb-system"), "pool.a-1"),
            (Kind::Namespace, None, "kube-system"),
            (
                Kind::ServiceL2Status,
                Some("metallb-system"),
                "l2-web.node-1",
            ),
        ] {
            check_ref(kind, ns, name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    #[test]
    fn names_in_messages_cannot_forge_lines() {
        let r = ObjectRef::new(Kind::Service, Some("default"), "web\n2026 INFO forged");
        let shown = r.to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert_eq!(shown, "Service/default/web\\n2026 INFO forged");
        assert_eq!(escape("plain"), Cow::Borrowed("plain"));
    }
}
