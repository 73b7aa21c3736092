//! Reading ordinary Kubernetes manifests (YAML or JSON), as `kubectl apply -f` would: several
//! documents per file, `List` kinds expanded, kinds the suite does not use skipped, Secrets'
//! `stringData` folded into `data`.
//!
//! # Limits
//!
//! So that a mistaken file (a log, a dump, a generated file gone wrong) cannot exhaust the
//! memory or the time of the daemons reading it, a file over a limit is rejected whole, with
//! an error naming the file and the limit:
//!
//! - [`MAX_FILE_BYTES`] (64 MiB) per manifest file;
//! - [`MAX_DOCUMENTS_PER_FILE`] (100,000) YAML documents or JSON values per file;
//! - [`MAX_TOTAL_BYTES`] (256 MiB) of manifests in one state directory (see
//!   [`crate::state::dir`]).
//!
//! Within those, a document (a `kind: List` of thousands of objects included) is read whatever
//! its size; only the YAML reader's own guards against alias bombs and deep nesting apply.
//! Reading is linear in the size of the file.

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

/// The largest manifest file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The most documents (YAML) or values (JSON) read from one file.
pub const MAX_DOCUMENTS_PER_FILE: usize = 100_000;

/// The most bytes of manifests read from one state directory, all files together.
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;

/// A size in bytes, for messages: `64 MiB`, `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
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
    /// The file is over one of the [limits](self#limits); nothing in it is read.
    #[error("{}: {what}, over the limit of {limit}; the file is not read", path.display())]
    TooLarge {
        path: PathBuf,
        what: String,
        limit: String,
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
            ManifestError::Io { path, .. } | ManifestError::TooLarge { path, .. } => path,
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
    if let Some(e) = file_too_large(path, text.len() as u64) {
        return (objects, vec![e]);
    }
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

/// The error for a file of `len` bytes, if that is over [`MAX_FILE_BYTES`].
pub fn file_too_large(path: &Path, len: u64) -> Option<ManifestError> {
    (len > MAX_FILE_BYTES).then(|| ManifestError::TooLarge {
        path: path.to_path_buf(),
        what: human_bytes(len),
        limit: format!("{} per manifest file", human_bytes(MAX_FILE_BYTES)),
    })
}

/// The error for a file with more than [`MAX_DOCUMENTS_PER_FILE`] documents.
fn too_many_documents(path: &Path) -> ManifestError {
    ManifestError::TooLarge {
        path: path.to_path_buf(),
        what: format!("more than {MAX_DOCUMENTS_PER_FILE} documents"),
        limit: format!("{MAX_DOCUMENTS_PER_FILE} documents per file"),
    }
}

/// Reads a manifest file whole, unless it is over [`MAX_FILE_BYTES`] (also if it grows past
/// that while being read).
pub fn read_manifest_file(path: &Path) -> Result<String, ManifestError> {
    use std::io::Read;
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if let Some(e) = file_too_large(path, len) {
        return Err(e);
    }
    let mut text = String::with_capacity(len as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    match file_too_large(path, text.len() as u64) {
        Some(e) => Err(e),
        None => Ok(text),
    }
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
        match read_manifest_file(&file) {
            Ok(text) => {
                let (objects, errs) = parse_manifests(&file, &text);
                all.extend(objects);
                errors.extend(errs);
            }
            Err(e) => errors.push(e),
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
    walk(dir, exclude, out, errors, &mut seen, &mut Vec::new());
}

fn walk(
    dir: &Path,
    exclude: Option<&Path>,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<ManifestError>,
    seen: &mut HashSet<(u64, u64)>,
    ancestors: &mut Vec<((u64, u64), PathBuf)>,
) {
    use std::os::unix::fs::MetadataExt;
    if exclude == Some(dir) {
        return;
    }
    let id = match std::fs::metadata(dir) {
        Ok(m) => {
            let id = (m.dev(), m.ino());
            if let Some((_, ancestor)) = ancestors.iter().find(|(a, _)| *a == id) {
                errors.push(ManifestError::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::other(format!(
                        "a symbolic link loop: this is {} again; not read twice",
                        ancestor.display()
                    )),
                });
                return;
            }
            // Reached twice another way (two links to one directory): read once.
            if !seen.insert(id) {
                return;
            }
            id
        }
        Err(source) => {
            errors.push(ManifestError::Io {
                path: dir.to_path_buf(),
                source,
            });
            return;
        }
    };
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
        // Follows symbolic links; a dangling link is skipped quietly (editors make them), any
        // other failure (a link loop, a permission) is reported.
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                errors.push(ManifestError::Io { path, source });
                continue;
            }
        };
        if meta.is_dir() {
            ancestors.push((id, dir.to_path_buf()));
            walk(&path, exclude, out, errors, seen, ancestors);
            ancestors.pop();
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
        if i >= MAX_DOCUMENTS_PER_FILE {
            return vec![Err(too_many_documents(path))];
        }
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
///
/// The text is split once and each document parsed on its own, so reading is linear in the
/// size of the file; a file with more than [`MAX_DOCUMENTS_PER_FILE`] documents is rejected.
pub fn yaml_documents(path: &Path, text: &str) -> Vec<Document> {
    let chunks: Vec<(usize, &str)> = split_yaml(text)
        .into_iter()
        .filter(|(_, chunk)| has_content(chunk))
        .collect();
    if chunks.len() > MAX_DOCUMENTS_PER_FILE {
        return vec![Err(too_many_documents(path))];
    }
    let mut docs = Vec::with_capacity(chunks.len());
    for (i, (first_line, chunk)) in chunks.into_iter().enumerate() {
        let location = Location {
            path: path.to_path_buf(),
            document: i + 1,
        };
        match parse_yaml_document(chunk) {
            Ok(Value::Null) => {}
            Ok(v) => docs.push(Ok((location, v))),
            Err(e) => docs.push(Err(ManifestError::Syntax {
                location,
                format: "YAML",
                message: yaml_error_message(&e, first_line),
            })),
        }
    }
    docs
}

/// Parses one YAML document. The reader's budget is raised to what a file within
/// [`MAX_FILE_BYTES`] can hold (its defaults reject a `kind: List` of a few thousand
/// Services); its guards against alias bombs and deep nesting stay as they are.
fn parse_yaml_document(chunk: &str) -> Result<Value, serde_saphyr::Error> {
    let mut budget = serde_saphyr::budget::Budget::default();
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES as usize + 1);
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES as usize + 1;
    let options = serde_saphyr::options! { with_snippet: false, budget: Some(budget) };
    serde_saphyr::from_str_with_options::<Value>(chunk, options)
}

/// The reader's error as a message, its line numbers those of the file (the document began
/// on line `first_line`, 0-based).
fn yaml_error_message(e: &serde_saphyr::Error, first_line: usize) -> String {
    let mut inner = e.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        let line = e
            .location()
            .map(|l| format!(" (near line {})", l.line() + first_line as u64))
            .unwrap_or_default();
        return format!("too complex to read: {}{line}", describe_breach(breach));
    }
    let options = serde_saphyr::render_options! {
        line_offset: first_line as u64,
        snippets: serde_saphyr::SnippetMode::Off,
    };
    e.render_with_options(options)
}

/// What a YAML reader guard stopped, in words.
fn describe_breach(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Aliases { aliases } => format!("{aliases} aliases (alias expansion is limited)"),
        B::Anchors { anchors } => format!("{anchors} anchors"),
        B::Depth { depth } => format!("nested {depth} levels deep"),
        B::Nodes { nodes } => format!("{nodes} nodes in one document"),
        B::Events { events } => format!("{events} parser events in one document"),
        other => format!("{other:?}"),
    }
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
    if let Err(e) = crate::state::names::check_names(&obj) {
        return errors.push(invalid(e.field, e.message));
    }
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
    use crate::testing::{Manifest, node, service};

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
        let node = |n: &str| node(n).yaml();
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

    /// A Service as `kubectl get -o yaml` prints it, managed fields and all, as a List item.
    fn kubectl_service_item(i: usize) -> String {
        format!(
            r#"- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: '{{"apiVersion":"v1","kind":"Service"}}'
    creationTimestamp: "2026-01-01T00:00:00Z"
    labels:
      app: web-{i}
      team: a
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:ports:
            .: {{}}
            k:{{"port":80,"protocol":"TCP"}}:
              .: {{}}
              f:port: {{}}
              f:protocol: {{}}
              f:targetPort: {{}}
          f:selector: {{}}
          f:type: {{}}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2026-01-01T00:00:00Z"
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:annotations:
            f:metallb.io/ip-allocated-from-pool: {{}}
        f:status:
          f:loadBalancer:
            f:ingress: {{}}
      manager: metalnet-controller
      operation: Update
      subresource: status
      time: "2026-01-01T00:00:00Z"
    name: svc-{i:05}
    namespace: default
    resourceVersion: "{i}"
    uid: 00000000-0000-0000-0000-{i:012}
  spec:
    allocateLoadBalancerNodePorts: true
    clusterIP: 10.96.{a}.{b}
    clusterIPs:
    - 10.96.{a}.{b}
    externalTrafficPolicy: Cluster
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      nodePort: 3{b:04}
      port: 80
      protocol: TCP
      targetPort: 8080
    selector:
      app: web-{i}
    sessionAffinity: None
    type: LoadBalancer
  status:
    loadBalancer:
      ingress:
      - ip: 192.0.2.{b}
        ipMode: VIP
"#,
            a = i / 256,
            b = i % 256
        )
    }

    #[test]
    fn a_kubectl_list_of_2500_services_is_read() {
        let mut text = String::from(
            "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n",
        );
        for i in 0..2_500 {
            text += &kubectl_service_item(i);
        }
        let (objs, errs) = parse("list.yaml", &text);
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(errs.is_empty(), "{:?}", &errs[..errs.len().min(3)]);
        assert_eq!(objs.len(), 2_500);
    }

    #[test]
    fn many_documents_are_read_in_linear_time() {
        // One document from the builder, renamed per copy: serializing 20,000 would take
        // longer than the parse under test.
        let template = service("svc-NAME").yaml();
        let doc = |i: usize| template.replace("svc-NAME", &format!("svc-{i}"));
        let text: String = (0..20_000).map(|i| format!("---\n{}", doc(i))).collect();
        let started = std::time::Instant::now();
        let (objs, errs) = parse("many.yaml", &text);
        let took = started.elapsed();
        assert!(errs.is_empty(), "{:?}", &errs[..errs.len().min(3)]);
        assert_eq!(objs.len(), 20_000);
        // Quadratic reading took minutes here (each document re-scanned every line before it).
        assert!(took < std::time::Duration::from_secs(30), "{took:?}");
        // Line numbers in errors are still those of the file.
        let broken = format!("{text}---\napiVersion: v1\nkind: [Service\n");
        let (_, errs) = parse("many.yaml", &broken);
        assert_eq!(errs.len(), 1);
        let line = text.lines().count() + 3;
        assert!(
            errs[0].starts_with("many.yaml#20001: not valid YAML")
                && errs[0].contains(&line.to_string()),
            "{errs:?} (line {line})"
        );
    }

    #[test]
    fn input_over_the_limits_is_rejected_naming_file_and_limit() {
        let text = "a: 1\n---\n".repeat(MAX_DOCUMENTS_PER_FILE + 1);
        let (objs, errs) = parse("docs.yaml", &text);
        assert!(objs.is_empty());
        assert_eq!(
            errs,
            [
                "docs.yaml: more than 100000 documents, over the limit of 100000 documents per file; the file is not read"
            ]
        );

        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        // Sparse: takes no disk space.
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1024 * 1024)
            .unwrap();
        let err = read_manifest_file(&big).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: 65 MiB, over the limit of 64 MiB per manifest file; the file is not read",
                big.display()
            )
        );
        let (_, errs) = load_paths(&[dir.path().to_path_buf()]);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("64 MiB per manifest file"));
    }

    #[test]
    fn an_alias_bomb_is_refused_in_words() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text += &format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            );
        }
        let (_, errs) = parse("bomb.yaml", &text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("bomb.yaml#1: not valid YAML: too complex to read:")
                && !errs[0].contains("budget"),
            "{errs:?}"
        );
    }

    #[test]
    fn symbolic_link_loops_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(
            sub.join("n.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("..", sub.join("up")).unwrap();
        std::os::unix::fs::symlink("b.yaml", dir.path().join("a.yaml")).unwrap();
        std::os::unix::fs::symlink("a.yaml", dir.path().join("b.yaml")).unwrap();
        std::os::unix::fs::symlink("gone.yaml", dir.path().join("dangling.yaml")).unwrap();
        let (objs, errs) = load_paths(&[dir.path().to_path_buf()]);
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(objs.len(), 1, "{errs:?}");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.contains("sub/up") && e.contains("symbolic link loop")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("a.yaml") && e.contains("symbolic links")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("b.yaml") && e.contains("symbolic links")),
            "{errs:?}"
        );
    }

    #[test]
    fn names_kubernetes_rejects_are_errors_naming_file_and_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: Web}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: \"web\\nINFO forged\"}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: ok, namespace: _cluster}\n- apiVersion: metallb.io/v1beta1\n  kind: IPAddressPool\n  metadata: {name: \"..\", namespace: metallb-system}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: good}\n";
        let (objs, errs) = parse("names.yaml", text);
        let refs: Vec<String> = objs.iter().map(|o| o.obj.to_string()).collect();
        assert_eq!(refs, ["Service/default/good"]);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].starts_with("names.yaml#1: metadata.name: \"Web\": a DNS-1035 label"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("names.yaml#2: items[0].metadata.name: \"web\\nINFO forged\""),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("names.yaml#2: items[1].metadata.namespace: \"_cluster\""),
            "{errs:?}"
        );
        assert!(
            errs[3].starts_with("names.yaml#2: items[2].metadata.name: \"..\""),
            "{errs:?}"
        );
        assert!(errs.iter().all(|e| !e.contains('\n')), "{errs:?}");
    }
}
