//! Upstream-style manifests: the valid ones decode into the typed model with no problem;
//! each invalid one gives exactly the errors its `# expect:` lines name.
//!
//! Read with the manifest loader, as `metalnet-controller validate` does.

use std::path::{Path, PathBuf};

use metalnet::manifest;
use metalnet::state::ObjectRef;
use metalnet::validate::{Problem, Severity, validate_objects};

fn fixture_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn load(path: &Path) -> Vec<(ObjectRef, serde_json::Value)> {
    let text = std::fs::read_to_string(path).unwrap();
    let (objects, errors) = manifest::parse_manifests(path, &text);
    assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    objects.into_iter().map(|o| (o.obj, o.value)).collect()
}

#[test]
fn valid_fixtures_have_no_problems() {
    for path in fixture_files("valid") {
        let objects = load(&path);
        assert!(!objects.is_empty(), "{}", path.display());
        let problems = validate_objects(&objects);
        assert!(
            problems.is_empty(),
            "{}:\n{}",
            path.display(),
            problems
                .iter()
                .map(|p| format!("  {p}\n"))
                .collect::<String>()
        );
    }
}

struct Expectation {
    severity: Severity,
    object: String,
    field: String,
    reason: String,
}

fn expectations(path: &Path) -> Vec<Expectation> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let mut next = || parts.next().unwrap_or_default().to_string();
            let severity = match next().as_str() {
                "error" => Severity::Error,
                "warning" => Severity::Warning,
                other => panic!("{}: bad severity {other:?}", path.display()),
            };
            Expectation {
                severity,
                object: next(),
                field: next(),
                reason: next(),
            }
        })
        .collect()
}

fn matches(p: &Problem, e: &Expectation) -> bool {
    p.severity == e.severity
        && p.object.to_string() == e.object
        && p.field == e.field
        && p.reason.contains(&e.reason)
}

#[test]
fn invalid_fixtures_give_expected_problems() {
    for path in fixture_files("invalid") {
        let problems = validate_objects(&load(&path));
        let expected = expectations(&path);
        assert!(
            !expected.is_empty(),
            "{} has no expect lines",
            path.display()
        );
        let listing = problems
            .iter()
            .map(|p| format!("  {p}\n"))
            .collect::<String>();
        for e in &expected {
            assert!(
                problems.iter().any(|p| matches(p, e)),
                "{}: missing {:?} {} {} {:?}; got:\n{listing}",
                path.display(),
                e.severity,
                e.object,
                e.field,
                e.reason
            );
        }
        for p in &problems {
            assert!(
                expected.iter().any(|e| matches(p, e)),
                "{}: unexpected problem {p}",
                path.display()
            );
        }
    }
}
