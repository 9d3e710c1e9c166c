//! What a test does when something it needs is not installed: [`skip_test`].
//!
//! A run under CI must not pass by skipping, so under CI a missing tool fails the test with the
//! install command in its message. Elsewhere the test is skipped with the reason printed, and
//! the reason is recorded for `./run test`'s summary line.

use std::io::Write;
use std::path::Path;

/// The environment variable naming the file where skipped tests are recorded, one line each
/// (`./run test` sets it, then counts the lines in its summary).
pub const SKIP_LOG_ENV: &str = "STRATA_SKIP_LOG";

/// Called by a test that cannot run because something is missing; `reason` says what and how
/// to install it (`"no postgresql-15 (apt-get install -y postgresql-15)"`). The test returns
/// right after.
///
/// - **Under CI** (`CI` set to anything but empty, `0` or `false`, as `.ci/run` does): panics
///   with the reason, so that a CI run fails instead of passing without the test.
/// - **Elsewhere**: prints `skipped: <reason>` and appends that line to the file named by
///   [`SKIP_LOG_ENV`] when it is set.
///
/// # Panics
///
/// Under CI, always (that is the point).
pub fn skip_test(reason: &str) {
    let ci = std::env::var("CI").ok();
    let log = std::env::var_os(SKIP_LOG_ENV);
    if let Err(message) = skip_with(reason, under_ci(ci.as_deref()), log.as_deref().map(Path::new)) {
        panic!("{message}");
    }
}

/// Whether the value of `CI` means a CI run.
fn under_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

/// [`skip_test`] with its inputs given: `Err` with the failure message under CI, else the skip
/// printed and recorded in `log` (best effort: a log that cannot be written only loses the count).
fn skip_with(reason: &str, ci: bool, log: Option<&Path>) -> Result<(), String> {
    if ci {
        return Err(format!("cannot run under CI: {reason}; a CI run must not pass by skipping"));
    }
    let line = format!("skipped: {reason}");
    println!("{line}");
    eprintln!("{line}");
    if let Some(path) = log {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            // One write per line, so that tests skipping at once cannot interleave their lines.
            .and_then(|mut file| file.write_all(format!("{}\n", line.replace('\n', " ")).as_bytes()));
        if let Err(err) = appended {
            eprintln!("could not record the skip in {}: {err}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_any_value_but_empty_zero_or_false() {
        for yes in ["true", "1", "yes", "TRUE", "github"] {
            assert!(under_ci(Some(yes)), "{yes}");
        }
        for no in [None, Some(""), Some("0"), Some("false"), Some("False ")] {
            assert!(!under_ci(no), "{no:?}");
        }
    }

    #[test]
    fn under_ci_a_missing_tool_fails_with_the_install_command() {
        let err = skip_with("no postgresql-15 (apt-get install -y postgresql-15)", true, None).expect_err("fails");
        assert!(err.contains("apt-get install -y postgresql-15"), "{err}");
        assert!(err.contains("under CI"), "{err}");
    }

    #[test]
    fn elsewhere_a_skip_is_recorded_one_line_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("skips");
        skip_with("no thing (apt-get install -y thing)", false, Some(&log)).expect("skipped");
        skip_with("no other\nthing", false, Some(&log)).expect("skipped");
        let text = std::fs::read_to_string(&log).expect("log");
        assert_eq!(text, "skipped: no thing (apt-get install -y thing)\nskipped: no other thing\n");
    }
}
