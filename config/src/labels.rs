//! Kubernetes label-selector matching (`metav1.LabelSelector`), as `LabelSelectorAsSelector`
//! in apimachinery does it:
//!
//! - `matchLabels` and `matchExpressions` are ANDed; an empty selector matches everything.
//! - `In` / `NotIn` need at least one value, `Exists` / `DoesNotExist` need none; any other
//!   operator is an error. `NotIn` and `DoesNotExist` match objects without the key.
//! - Keys must be qualified names (`[prefix/]name`), values valid label values.
//!
//! Compile a selector once with [`Selector::new`] and call [`Selector::matches`] per object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a label selector is invalid. `field` is the path relative to the selector
/// (`matchLabels["app"]`, `matchExpressions[0].values[1]`); [`SelectorError::reason`] is the
/// message without it, so callers can prefix their own path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{field}: key {key:?}: {reason}")]
    InvalidKey {
        field: String,
        key: String,
        reason: &'static str,
    },
    #[error("{field}: value {value:?} for key {key:?}: {reason}")]
    InvalidValue {
        field: String,
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("{field}: {operator:?} is not a valid operator (In, NotIn, Exists, DoesNotExist)")]
    UnknownOperator { field: String, operator: String },
    #[error("{field}: operator {operator} needs at least one value")]
    MissingValues {
        field: String,
        operator: &'static str,
    },
    #[error("{field}: operator {operator} takes no values")]
    UnexpectedValues {
        field: String,
        operator: &'static str,
    },
}

impl SelectorError {
    /// The field path, relative to the selector.
    pub fn field(&self) -> &str {
        match self {
            SelectorError::InvalidKey { field, .. }
            | SelectorError::InvalidValue { field, .. }
            | SelectorError::UnknownOperator { field, .. }
            | SelectorError::MissingValues { field, .. }
            | SelectorError::UnexpectedValues { field, .. } => field,
        }
    }

    /// The message without the field path.
    pub fn reason(&self) -> String {
        let full = self.to_string();
        full.strip_prefix(&format!("{}: ", self.field()))
            .map(str::to_string)
            .unwrap_or(full)
    }
}

/// Read access to an object's labels.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<S: std::hash::BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<L: Labels + ?Sized> Labels for &L {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

/// An object without labels (`metadata.labels` absent).
impl Labels for () {
    fn label(&self, _key: &str) -> Option<&str> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Operator {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Requirement {
    key: String,
    op: Operator,
}

impl Requirement {
    fn matches(&self, labels: &(impl Labels + ?Sized)) -> bool {
        let value = labels.label(&self.key);
        match &self.op {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A validated, compiled label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// Sorted by key (then operator), as apimachinery sorts them; ANDed.
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Validate and compile `selector`; the first problem on error (see [`Selector::parse`]).
    pub fn new(selector: &LabelSelector) -> Result<Self, SelectorError> {
        Self::parse(selector).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Validate and compile `selector`, reporting every problem (never an empty list).
    pub fn parse(selector: &LabelSelector) -> Result<Self, Vec<SelectorError>> {
        let mut errors = Vec::new();
        let mut requirements = Vec::new();
        if let Some(labels) = &selector.match_labels {
            for (key, value) in labels {
                let field = format!("matchLabels[{key:?}]");
                errors.extend(validate_key(&field, key).err());
                errors.extend(validate_value(&field, key, value).err());
                requirements.push(Requirement {
                    key: key.clone(),
                    op: Operator::In(BTreeSet::from([value.clone()])),
                });
            }
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            errors.extend(validate_key(&format!("{field}.key"), &expr.key).err());
            let values = expr.values.as_deref().unwrap_or_default();
            for (j, value) in values.iter().enumerate() {
                errors.extend(
                    validate_value(&format!("{field}.values[{j}]"), &expr.key, value).err(),
                );
            }
            let set = || values.iter().cloned().collect::<BTreeSet<String>>();
            let values_field = format!("{field}.values");
            let op = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    errors.push(SelectorError::MissingValues {
                        field: values_field,
                        operator: if expr.operator == "In" { "In" } else { "NotIn" },
                    });
                    continue;
                }
                "In" => Operator::In(set()),
                "NotIn" => Operator::NotIn(set()),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    errors.push(SelectorError::UnexpectedValues {
                        field: values_field,
                        operator: if expr.operator == "Exists" {
                            "Exists"
                        } else {
                            "DoesNotExist"
                        },
                    });
                    continue;
                }
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    errors.push(SelectorError::UnknownOperator {
                        field: format!("{field}.operator"),
                        operator: other.to_string(),
                    });
                    continue;
                }
            };
            requirements.push(Requirement {
                key: expr.key.clone(),
                op,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        requirements.sort();
        requirements.dedup();
        Ok(Self { requirements })
    }

    /// True when the selector has no requirement and so matches every object.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &(impl Labels + ?Sized)) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// One-shot: does `selector` match `labels`? Invalid selectors are an error.
pub fn matches(
    selector: &LabelSelector,
    labels: &(impl Labels + ?Sized),
) -> Result<bool, SelectorError> {
    Ok(Selector::new(selector)?.matches(labels))
}

/// The apimachinery string form: `a=b,c in (d,e),!f,g`; empty for "everything".
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(",");
            match &r.op {
                Operator::In(v) if v.len() == 1 => write!(f, "{}={}", r.key, list(v))?,
                Operator::In(v) => write!(f, "{} in ({})", r.key, list(v))?,
                Operator::NotIn(v) => write!(f, "{} notin ({})", r.key, list(v))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.'
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn name_problem(s: &str) -> Option<&'static str> {
    let b = s.as_bytes();
    if b.len() > 63 {
        return Some("must be at most 63 characters");
    }
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return Some("must not be empty");
    };
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Some("must start and end with an alphanumeric character");
    }
    if !b.iter().all(|&c| is_name_char(c)) {
        return Some("may contain only alphanumerics, '-', '_' and '.'");
    }
    None
}

/// Lowercase RFC 1123 subdomain, at most 253 characters.
fn subdomain_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 253 {
        return Some("prefix must be 1 to 253 characters");
    }
    let ok_label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if !s.split('.').all(ok_label) {
        return Some("prefix must be a lowercase DNS subdomain");
    }
    None
}

fn validate_key(field: &str, key: &str) -> Result<(), SelectorError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let problem = prefix
        .and_then(subdomain_problem)
        .or_else(|| name_problem(name));
    match problem {
        None => Ok(()),
        Some(reason) => Err(SelectorError::InvalidKey {
            field: field.to_string(),
            key: key.to_string(),
            reason,
        }),
    }
}

fn validate_value(field: &str, key: &str, value: &str) -> Result<(), SelectorError> {
    if value.is_empty() {
        return Ok(());
    }
    match name_problem(value) {
        None => Ok(()),
        Some(reason) => Err(SelectorError::InvalidValue {
            field: field.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| v.to_string()).collect())
            },
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: if ml.is_empty() {
                None
            } else {
                Some(labels(ml))
            },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::new(&LabelSelector::default()).unwrap();
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        assert!(s.matches(&()));
    }

    #[test]
    fn match_labels_are_anded() {
        let s = Selector::new(&sel(&[("app", "web"), ("tier", "fe")], vec![])).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn operators() {
        let l = labels(&[("env", "prod"), ("team", "a")]);
        let m = |e| matches(&sel(&[], vec![e]), &l).unwrap();
        assert!(m(expr("env", "In", &["prod", "stage"])));
        assert!(!m(expr("env", "In", &["dev"])));
        assert!(!m(expr("missing", "In", &["x"])));
        assert!(m(expr("env", "NotIn", &["dev"])));
        assert!(!m(expr("env", "NotIn", &["prod"])));
        assert!(
            m(expr("missing", "NotIn", &["x"])),
            "NotIn matches absent keys"
        );
        assert!(m(expr("team", "Exists", &[])));
        assert!(!m(expr("missing", "Exists", &[])));
        assert!(m(expr("missing", "DoesNotExist", &[])));
        assert!(!m(expr("team", "DoesNotExist", &[])));
    }

    #[test]
    fn labels_and_expressions_combine() {
        let s = Selector::new(&sel(
            &[("app", "web")],
            vec![expr("env", "NotIn", &["dev"])],
        ))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert_eq!(s.to_string(), "app=web,env notin (dev)");
    }

    #[test]
    fn invalid_selectors_are_errors() {
        let bad = |e| Selector::new(&sel(&[], vec![e])).unwrap_err();
        assert!(matches!(
            bad(expr("a", "Equals", &["x"])),
            SelectorError::UnknownOperator { .. }
        ));
        assert!(matches!(
            bad(expr("a", "In", &[])),
            SelectorError::MissingValues { .. }
        ));
        assert!(matches!(
            bad(expr("a", "Exists", &["x"])),
            SelectorError::UnexpectedValues { .. }
        ));
        assert!(matches!(
            bad(expr("-a", "Exists", &[])),
            SelectorError::InvalidKey { .. }
        ));
        assert!(matches!(
            bad(expr("Example.com/a", "Exists", &[])),
            SelectorError::InvalidKey { .. }
        ));
        assert!(matches!(
            bad(expr("a", "In", &["bad value"])),
            SelectorError::InvalidValue { .. }
        ));
        let err = Selector::new(&sel(&[("a", "b c")], vec![])).unwrap_err();
        assert!(err.to_string().contains("matchLabels[\"a\"]"), "{err}");
        assert_eq!(err.field(), "matchLabels[\"a\"]");
        assert!(err.reason().starts_with("value \"b c\""), "{err}");
    }

    #[test]
    fn parse_reports_every_problem_with_its_path() {
        let errors = Selector::parse(&sel(
            &[("bad key!", "ok")],
            vec![
                expr("a", "Exists", &["x"]),
                expr("b", "NotIn", &[]),
                expr("c", "Equals", &["v"]),
                expr("-d", "In", &["ok", "-bad"]),
            ],
        ))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(SelectorError::field).collect();
        assert_eq!(
            fields,
            [
                "matchLabels[\"bad key!\"]",
                "matchExpressions[0].values",
                "matchExpressions[1].values",
                "matchExpressions[2].operator",
                "matchExpressions[3].key",
                "matchExpressions[3].values[1]",
            ]
        );
    }

    #[test]
    fn label_keys_with_prefixes() {
        assert!(validate_key("k", "kubernetes.io/hostname").is_ok());
        assert!(validate_key("k", "node-role.kubernetes.io/worker").is_ok());
        assert!(validate_key("k", "app").is_ok());
        assert!(validate_key("k", "Example.com/x").is_err());
        assert!(validate_key("k", "/x").is_err());
        assert!(validate_key("k", "a/b/c").is_err());
        assert!(validate_key("k", &"a".repeat(64)).is_err());
        assert!(validate_value("k", "k", "").is_ok());
    }

    #[test]
    fn prefixed_keys_and_empty_values_are_valid() {
        let s = Selector::new(&sel(&[("example.com/role", "")], vec![])).unwrap();
        assert!(s.matches(&labels(&[("example.com/role", "")])));
        assert!(!s.matches(&labels(&[("example.com/role", "x")])));
    }
}
