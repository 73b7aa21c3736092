//! How patient tests are: one factor, read from [`PATIENCE_VAR`], that scales every timeout
//! the lab and the fixtures wait for, so a slow or loaded machine can give them more time
//! without editing tests (`METALNET_TEST_PATIENCE=3 cargo test …`).

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable holding the factor: a positive number, `1` when unset.
pub const PATIENCE_VAR: &str = "METALNET_TEST_PATIENCE";

/// Parses a patience factor: a finite number above zero.
pub fn parse_factor(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!(
            "{PATIENCE_VAR}={text:?}: expected a number above 0 (a factor for every test timeout)"
        )),
    }
}

/// The factor from the environment (read once). An unreadable value fails the test that
/// asks, naming the variable.
pub fn factor() -> f64 {
    static FACTOR: OnceLock<Result<f64, String>> = OnceLock::new();
    let read = FACTOR.get_or_init(|| match std::env::var(PATIENCE_VAR) {
        Ok(text) => parse_factor(&text),
        Err(_) => Ok(1.0),
    });
    match read {
        Ok(f) => *f,
        Err(e) => panic!("{e}"),
    }
}

/// `timeout` scaled by the patience factor.
pub fn patient(timeout: Duration) -> Duration {
    scale(timeout, factor())
}

fn scale(timeout: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(timeout.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_parse_and_scale() {
        assert_eq!(parse_factor("2.5"), Ok(2.5));
        assert_eq!(parse_factor(" 3 "), Ok(3.0));
        for bad in ["0", "-1", "NaN", "inf", "slow", ""] {
            let e = parse_factor(bad).unwrap_err();
            assert!(e.contains(PATIENCE_VAR), "{e}");
        }
        assert_eq!(scale(Duration::from_secs(10), 2.5), Duration::from_secs(25));
        assert_eq!(scale(Duration::from_secs(u64::MAX), 2.0), Duration::MAX);
    }
}
