//! `metalnet-controller validate PATH...`: checks manifests without a cluster.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use metalnet::manifest;
use metalnet::validate::{Severity, validate_objects};

/// Prints every problem in the manifests under `paths`; returns whether any is an error.
pub fn run(paths: &[PathBuf], out: &mut dyn Write) -> std::io::Result<bool> {
    let (objects, load_errors) = manifest::load_paths(paths);
    for e in &load_errors {
        writeln!(out, "error: {e}")?;
    }
    let locations: BTreeMap<_, _> = objects
        .iter()
        .map(|o| (o.obj.clone(), o.source.to_string()))
        .collect();
    let raw: Vec<_> = objects
        .iter()
        .map(|o| (o.obj.clone(), o.value.clone()))
        .collect();
    let problems = validate_objects(&raw);
    let mut errors = load_errors.len();
    for p in &problems {
        let level = match p.severity {
            Severity::Error => {
                errors += 1;
                "error"
            }
            Severity::Warning => "warning",
        };
        let at = locations
            .get(&p.object)
            .map(|l| format!("{l}: "))
            .unwrap_or_default();
        writeln!(out, "{level}: {at}{}: {}: {}", p.object, p.field, p.reason)?;
    }
    let warnings = problems.len() + load_errors.len() - errors;
    writeln!(
        out,
        "{} objects checked: {errors} error(s), {warnings} warning(s)",
        objects.len()
    )?;
    Ok(errors > 0)
}
