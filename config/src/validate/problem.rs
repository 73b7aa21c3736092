//! A problem found in one object: which object, which field, why, how bad.

use std::fmt;

use crate::state::ObjectRef;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The object (or the part named) is not used.
    Error,
    /// The object is used, but probably not as its author meant.
    Warning,
}

/// One thing wrong with one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectRef,
    /// Path of the field in the manifest, e.g. `spec.addresses[1]`; empty for the object.
    pub field: String,
    pub reason: String,
    pub severity: Severity,
}

impl Problem {
    pub(super) fn error(
        object: &ObjectRef,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Problem {
            object: object.clone(),
            field: field.into(),
            reason: reason.into(),
            severity: Severity::Error,
        }
    }

    pub(super) fn warning(
        object: &ObjectRef,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(object, field, reason)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    /// `IPAddressPool/metallb-system/pool-a: spec.addresses[1]: "…": reason`; warnings end
    /// in ` (warning)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.object)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)?;
        if self.severity == Severity::Warning {
            f.write_str(" (warning)")?;
        }
        Ok(())
    }
}
