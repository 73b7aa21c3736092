//! Reading ordinary Kubernetes manifests (YAML or JSON), as `kubectl apply -f` would: several
//! documents per file, `List` kinds expanded, kinds the suite does not use skipped, Secrets'
//! `stringData` folded into `data`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::state::{Kind, ObjectRef};

/// Where an object was read: a file and the document in it (1-based, counting only documents
/// with content).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub path: PathBuf,
    pub document: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.path.display(), self.document)
    }
}

/// One object read from a manifest, as JSON, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct RawObject {
    pub obj: ObjectRef,
    pub value: Value,
    pub source: Location,
}

/// What is wrong with a manifest; the message names the file, the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: not valid {format}: {message}")]
    Syntax {
        location: Location,
        format: &'static str,
        message: String,
    },
    #[error("{location}: missing {field}")]
    MissingField { location: Location, field: String },
    #[error("{location}: {field}: {message}")]
    InvalidField {
        location: Location,
        field: String,
        message: String,
    },
    #[error("{second}: {object} is already defined at {first}")]
    Duplicate {
        object: ObjectRef,
        first: Location,
        second: Location,
    },
}

impl ManifestError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::Io { path, .. } => path,
            ManifestError::Syntax { location, .. }
            | ManifestError::MissingField { location, .. }
            | ManifestError::InvalidField { location, .. } => &location.path,
            ManifestError::Duplicate { second, .. } => &second.path,
        }
    }
}

/// Parses the manifests in `text` (read from `path`, which names them in errors and decides
/// JSON vs YAML by its extension). Returns every object of a kind the suite knows and an
/// error for each document that could not be read; good documents are returned even when
/// others in the file are bad.
pub fn parse_manifests(path: &Path, text: &str) -> (Vec<RawObject>, Vec<ManifestError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let documents = if is_json {
        json_documents(path, text)
    } else {
        yaml_documents(path, text)
    };
    for doc in documents {
        match doc {
            Ok((location, value)) => {
                read_document(&location, value, None, &mut objects, &mut errors)
            }
            Err(e) => errors.push(e),
        }
    }
    (objects, errors)
}

/// The directory under a state directory where metalnet writes (status patches, its own
/// objects, Events, locks): never the user's manifests.
pub const STATUS_DIR: &str = "status";

/// `dir/status` if it is metalnet's (it holds `patches/`, `objects/` or `locks/`), which
/// reading `dir` as manifests must skip.
pub fn state_status_dir(dir: &Path) -> Option<PathBuf> {
    let status = dir.join(STATUS_DIR);
    ["patches", "objects", "locks"]
        .iter()
        .any(|d| status.join(d).is_dir())
        .then_some(status)
}

/// Reads every manifest file in `paths` (files, or directories searched recursively for
/// `*.yaml`, `*.yml` and `*.json`, skipping hidden and editor temporary files, and the
/// `status/` directory metalnet writes in a state directory). An object defined twice is an
/// error naming both places; the definition kept is the one in the file modified longest
/// ago (then in path order), as the state-directory backend keeps the older definition.
pub fn load_paths(paths: &[PathBuf]) -> (Vec<RawObject>, Vec<ManifestError>) {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                let status = state_status_dir(path);
                manifest_files(path, status.as_deref(), &mut files, &mut errors)
            }
            Ok(_) => files.push(path.clone()),
            Err(source) => errors.push(ManifestError::Io {
                path: path.clone(),
                source,
            }),
        }
    }
    let mut all = Vec::new();
    let mut ages = BTreeMap::new();
    for file in files {
        let modified = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        ages.insert(file.clone(), modified);
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (objects, errs) = parse_manifests(&file, &text);
                all.extend(objects);
                errors.extend(errs);
            }
            Err(source) => errors.push(ManifestError::Io { path: file, source }),
        }
    }
    // Older files first for the dedup; the objects are returned in path order.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| {
        let at = &all[i].source;
        (ages.get(&at.path).copied(), at.path.clone(), at.document)
    });
    let mut kept_first: BTreeMap<ObjectRef, Location> = BTreeMap::new();
    let mut keep = vec![false; all.len()];
    for i in order {
        let o = &all[i];
        match kept_first.get(&o.obj) {
            Some(first) => errors.push(ManifestError::Duplicate {
                object: o.obj.clone(),
                first: first.clone(),
                second: o.source.clone(),
            }),
            None => {
                kept_first.insert(o.obj.clone(), o.source.clone());
                keep[i] = true;
            }
        }
    }
    let objects = all
        .into_iter()
        .zip(keep)
        .filter_map(|(o, k)| k.then_some(o))
        .collect();
    (objects, errors)
}

/// Keeps the first definition of each object, returning an error for every later one.
pub fn dedup(objects: Vec<RawObject>) -> (Vec<RawObject>, Vec<ManifestError>) {
    let mut first: BTreeMap<ObjectRef, Location> = BTreeMap::new();
    let mut kept = Vec::with_capacity(objects.len());
    let mut errors = Vec::new();
    for o in objects {
        if let Some(loc) = first.get(&o.obj) {
            errors.push(ManifestError::Duplicate {
                object: o.obj,
                first: loc.clone(),
                second: o.source,
            });
        } else {
            first.insert(o.obj.clone(), o.source.clone());
            kept.push(o);
        }
    }
    (kept, errors)
}

/// Whether a file name is one we read: a manifest extension, not hidden, not an editor's
/// temporary or backup file.
pub fn is_manifest_name(name: &str) -> bool {
    if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Collects manifest files under `dir` recursively, sorted, skipping hidden entries and the
/// directory `exclude`. Symbolic links are followed (ConfigMap volumes are made of them);
/// a directory reached twice is read once.
pub fn manifest_files(
    dir: &Path,
    exclude: Option<&Path>,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<ManifestError>,
) {
    let mut seen = HashSet::new();
    walk(dir, exclude, out, errors, &mut seen);
}

fn walk(
    dir: &Path,
    exclude: Option<&Path>,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<ManifestError>,
    seen: &mut HashSet<(u64, u64)>,
) {
    use std::os::unix::fs::MetadataExt;
    if exclude == Some(dir) {
        return;
    }
    match std::fs::metadata(dir) {
        Ok(m) => {
            if !seen.insert((m.dev(), m.ino())) {
                return;
            }
        }
        Err(source) => {
            errors.push(ManifestError::Io {
                path: dir.to_path_buf(),
                source,
            });
            return;
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(source) => {
            errors.push(ManifestError::Io {
                path: dir.to_path_buf(),
                source,
            });
            return;
        }
    };
    let mut names: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // Follows symbolic links; a dangling link is skipped quietly (editors make them).
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, exclude, out, errors, seen);
        } else if meta.is_file() && is_manifest_name(name) {
            out.push(path);
        }
    }
}

/// One document of a manifest file, or why it could not be read.
pub type Document = Result<(Location, Value), ManifestError>;

fn json_documents(path: &Path, text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, value) in stream.enumerate() {
        let location = Location {
            path: path.to_path_buf(),
            document: i + 1,
        };
        match value {
            Ok(Value::Null) => {}
            Ok(v) => docs.push(Ok((location, v))),
            Err(e) => {
                docs.push(Err(ManifestError::Syntax {
                    location,
                    format: "JSON",
                    message: e.to_string(),
                }));
                // The rest of the stream cannot be trusted after a syntax error.
                break;
            }
        }
    }
    docs
}

/// Splits YAML text into documents at `---` lines, as kubectl does, so one broken document
/// does not hide the others and each error names its document.
/// Every non-empty document of a YAML stream read from `path`, whatever its kind (for
/// manifests outside the suite's model, e.g. `deploy/`); `parse_manifests` keeps known kinds.
pub fn yaml_documents(path: &Path, text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut number = 0;
    for (first_line, chunk) in split_yaml(text) {
        if !has_content(chunk) {
            continue;
        }
        number += 1;
        let location = Location {
            path: path.to_path_buf(),
            document: number,
        };
        // Blank lines in front keep the parser's line numbers those of the file.
        let padded = format!("{}{}", "\n".repeat(first_line), chunk);
        let options = serde_saphyr::options! { with_snippet: false };
        match serde_saphyr::from_str_with_options::<Value>(&padded, options) {
            Ok(Value::Null) => {}
            Ok(v) => docs.push(Ok((location, v))),
            Err(e) => docs.push(Err(ManifestError::Syntax {
                location,
                format: "YAML",
                message: e.to_string(),
            })),
        }
    }
    docs
}

/// The documents of a YAML stream with the (0-based) line each starts on.
fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut start_line = 0;
    let mut offset = 0;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end_matches(['\n', '\r']);
        let is_separator = trimmed
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '#']));
        if is_separator {
            out.push((start_line, &text[start..offset]));
            // Content after `--- ` on the same line belongs to the next document.
            start = offset + 3;
            start_line = line_no;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start..]));
    out
}

/// Whether a YAML chunk holds more than blank lines, comments and directives.
fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|l| {
        let t = l.trim();
        !(t.is_empty() || t.starts_with('#') || t.starts_with('%') || t == "...")
    })
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Result<Option<&'a str>, String> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(Value::Null) | None => return Ok(None),
            Some(next) => cur = next,
        }
    }
    match cur {
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(format!("must be a string, not {}", type_name(other))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Reads one document (or one item of a List, `item` being its index).
fn read_document(
    location: &Location,
    mut value: Value,
    item: Option<usize>,
    objects: &mut Vec<RawObject>,
    errors: &mut Vec<ManifestError>,
) {
    let prefix = item.map(|i| format!("items[{i}].")).unwrap_or_default();
    let field = |f: &str| format!("{prefix}{f}");
    let invalid = |f: &str, message: String| ManifestError::InvalidField {
        location: location.clone(),
        field: field(f),
        message,
    };
    let missing = |f: &str| ManifestError::MissingField {
        location: location.clone(),
        field: field(f),
    };
    if !value.is_object() {
        let what = if prefix.is_empty() {
            "document".to_string()
        } else {
            format!("items[{}]", item.unwrap_or_default())
        };
        errors.push(ManifestError::InvalidField {
            location: location.clone(),
            field: what,
            message: format!("must be a mapping, not {}", type_name(&value)),
        });
        return;
    }
    let api_version = match str_field(&value, &["apiVersion"]) {
        Ok(Some(a)) => a.to_string(),
        Ok(None) => return errors.push(missing("apiVersion")),
        Err(e) => return errors.push(invalid("apiVersion", e)),
    };
    let kind_name = match str_field(&value, &["kind"]) {
        Ok(Some(k)) => k.to_string(),
        Ok(None) => return errors.push(missing("kind")),
        Err(e) => return errors.push(invalid("kind", e)),
    };
    if item.is_none() && (kind_name == "List" || kind_name.ends_with("List")) {
        match value.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => {
                for (i, it) in items.into_iter().enumerate() {
                    read_document(location, it, Some(i), objects, errors);
                }
            }
            Some(Value::Null) | None => {}
            Some(other) => errors.push(invalid(
                "items",
                format!("must be a list, not {}", type_name(&other)),
            )),
        }
        return;
    }
    let Some(kind) = Kind::from_manifest(&api_version, &kind_name) else {
        tracing::debug!(%location, api_version, kind = kind_name, "skipping a kind metalnet does not use");
        return;
    };
    let name = match str_field(&value, &["metadata", "name"]) {
        Ok(Some(n)) => n.to_string(),
        Ok(None) => return errors.push(missing("metadata.name")),
        Err(e) => return errors.push(invalid("metadata.name", e)),
    };
    let namespace = match str_field(&value, &["metadata", "namespace"]) {
        Ok(ns) => ns.map(str::to_string),
        Err(e) => return errors.push(invalid("metadata.namespace", e)),
    };
    let obj = ObjectRef::new(kind, namespace.as_deref(), &name);
    // The API server fills in the namespace; do the same so objects read alike from both
    // backends.
    if let Some(ns) = &obj.namespace
        && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("namespace".into(), Value::String(ns.clone()));
    }
    if kind == Kind::Secret
        && let Err((f, message)) = fold_string_data(&mut value)
    {
        return errors.push(invalid(&f, message));
    }
    objects.push(RawObject {
        obj,
        value,
        source: location.clone(),
    });
}

/// Moves a Secret's `stringData` into `data`, base64-encoded, as the API server does
/// (`stringData` wins over `data` for the same key).
fn fold_string_data(value: &mut Value) -> Result<(), (String, String)> {
    let Some(map) = value.as_object_mut() else {
        return Ok(());
    };
    let string_data = match map.remove("stringData") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err((
                "stringData".into(),
                format!("must be a mapping, not {}", type_name(&other)),
            ));
        }
    };
    let data = map
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if data.is_null() {
        *data = Value::Object(Default::default());
    }
    let Some(data) = data.as_object_mut() else {
        return Err(("data".into(), "must be a mapping".into()));
    };
    for (k, v) in string_data {
        let Value::String(s) = v else {
            return Err((
                format!("stringData.{k}"),
                format!("must be a string, not {}", type_name(&v)),
            ));
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        data.insert(k, Value::String(encoded));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> (Vec<RawObject>, Vec<String>) {
        let (objs, errs) = parse_manifests(Path::new(name), text);
        (objs, errs.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn multi_document_with_service_pool_and_secret() {
        let text = r#"
# leading comment
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: LoadBalancer
  ports: [{port: 80}]
---
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: pool-a
  namespace: metallb-system
spec:
  addresses: ["192.0.2.0/28"]
--- # a secret
apiVersion: v1
kind: Secret
metadata: {name: peer-pw, namespace: metallb-system}
data:
  old: b2xk
  password: b3ZlcndyaXR0ZW4=
stringData:
  password: s3cret
"#;
        let (objs, errs) = parse("all.yaml", text);
        assert!(errs.is_empty(), "{errs:?}");
        let refs: Vec<String> = objs.iter().map(|o| o.obj.to_string()).collect();
        assert_eq!(
            refs,
            [
                "Service/default/web",
                "IPAddressPool/metallb-system/pool-a",
                "Secret/metallb-system/peer-pw"
            ]
        );
        assert_eq!(objs[0].value["metadata"]["namespace"], "default");
        assert_eq!(objs[1].source.to_string(), "all.yaml#2");
        assert_eq!(objs[2].source.document, 3);
        let secret = &objs[2].value;
        assert_eq!(secret["data"]["password"], "czNjcmV0");
        assert_eq!(secret["data"]["old"], "b2xk");
        assert!(secret.get("stringData").is_none());
    }

    #[test]
    fn list_is_expanded_and_unknown_kinds_skipped() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: metallb.io/v1beta1
  kind: L2Advertisement
  metadata: {name: l2, namespace: metallb-system}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: app}
- apiVersion: v1
  kind: Node
  metadata: {name: node-1, namespace: ignored}
- apiVersion: metallb.io/v1beta1
  kind: IPAddressPool
  metadata: {namespace: metallb-system}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: speaker}
"#;
        let (objs, errs) = parse("list.yaml", text);
        let refs: Vec<String> = objs.iter().map(|o| o.obj.to_string()).collect();
        assert_eq!(refs, ["L2Advertisement/metallb-system/l2", "Node/node-1"]);
        assert_eq!(errs, ["list.yaml#1: missing items[3].metadata.name"]);
    }

    #[test]
    fn missing_fields_are_named() {
        let (_, errs) = parse(
            "pools.yaml",
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {}\n---\nkind: Service\n---\napiVersion: v1\n---\n- a\n",
        );
        assert_eq!(
            errs,
            [
                "pools.yaml#1: missing metadata.name",
                "pools.yaml#2: missing apiVersion",
                "pools.yaml#3: missing kind",
                "pools.yaml#4: document: must be a mapping, not a list",
            ]
        );
    }

    #[test]
    fn broken_yaml_names_file_and_document_and_keeps_the_rest() {
        let text = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: [b\n---\napiVersion: v1\nkind: Node\nmetadata: {name: c}\n";
        let (objs, errs) = parse("nodes.yaml", text);
        let refs: Vec<String> = objs.iter().map(|o| o.obj.to_string()).collect();
        assert_eq!(refs, ["Node/a", "Node/c"]);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("nodes.yaml#2: not valid YAML:"),
            "{}",
            errs[0]
        );
        // The parser's line number is that of the file (line 7).
        assert!(errs[0].contains('7'), "{}", errs[0]);
    }

    #[test]
    fn json_documents_are_read() {
        let text = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"ns1"}}
{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns1"}}]}"#;
        let (objs, errs) = parse("x.json", text);
        assert!(errs.is_empty(), "{errs:?}");
        let refs: Vec<String> = objs.iter().map(|o| o.obj.to_string()).collect();
        assert_eq!(refs, ["Namespace/ns1", "Pod/ns1/p"]);
        let (_, errs) = parse("x.json", "{\"apiVersion\": ");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("x.json#1: not valid JSON"), "{errs:?}");
    }

    #[test]
    fn bad_string_data_is_an_error() {
        let (objs, errs) = parse(
            "s.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {port: 5432}\n",
        );
        assert!(objs.is_empty());
        assert_eq!(
            errs,
            ["s.yaml#1: stringData.port: must be a string, not a number"]
        );
    }

    #[test]
    fn odd_input_never_panics() {
        for text in [
            "",
            "---",
            "--- |\n  text\n",
            "a: *nope\n",
            "? [a]\n: b\n",
            "1: 2\n",
            "[[[[",
            "\u{feff}apiVersion: v1\nkind: Node\nmetadata: {name: n}\n",
            "apiVersion: v1\nkind: List\nitems: 5\n",
            "apiVersion: 5\nkind: Node\n",
            "apiVersion: v1\nkind: Node\nmetadata: {name: 7}\n",
            "%YAML 1.2\n---\napiVersion: v1\nkind: Node\nmetadata: {name: d}\n",
        ] {
            let _ = parse("odd.yaml", text);
            let _ = parse("odd.json", text);
        }
        let (objs, errs) = parse(
            "d.yaml",
            "%YAML 1.2\n---\napiVersion: v1\nkind: Node\nmetadata: {name: d}\n",
        );
        assert_eq!(objs.len(), 1, "{errs:?}");
    }

    #[test]
    fn load_paths_reads_directories_and_reports_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        let node = |n: &str| format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n");
        std::fs::write(dir.path().join("a.yaml"), node("n1")).unwrap();
        std::fs::write(sub.join("b.yml"), node("n2") + "---\n" + &node("n1")).unwrap();
        std::fs::write(dir.path().join(".git/c.yaml"), node("hidden")).unwrap();
        std::fs::write(dir.path().join("a.yaml~"), node("backup")).unwrap();
        std::fs::write(dir.path().join(".a.yaml.swp"), node("swap")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let (objs, errs) = load_paths(&[dir.path().to_path_buf()]);
        let refs: Vec<String> = objs.iter().map(|o| o.obj.to_string()).collect();
        assert_eq!(refs, ["Node/n1", "Node/n2"]);
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(
            msg.contains("sub/b.yml#2") && msg.contains("a.yaml#1") && msg.contains("Node/n1"),
            "{msg}"
        );
        let (_, errs) = load_paths(&[dir.path().join("missing.yaml")]);
        assert!(errs[0].to_string().contains("missing.yaml"));
    }
}
