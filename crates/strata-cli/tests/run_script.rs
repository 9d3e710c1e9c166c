//! `./run`, the README's entry point: where it finds the binaries it builds (the user's
//! `CARGO_TARGET_DIR` honoured) and the summary line `./run test` prints.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// Runs `./run ARGS` with `CARGO_TARGET_DIR` set to `target_dir` (unset when `None`).
fn run(args: &[&str], target_dir: Option<&Path>) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("run")).args(args).env("NO_COLOR", "1");
    match target_dir {
        Some(dir) => cmd.env("CARGO_TARGET_DIR", dir),
        None => cmd.env_remove("CARGO_TARGET_DIR").env_remove("CARGO_BUILD_TARGET_DIR"),
    };
    let out = cmd.output().expect("bash runs ./run");
    assert!(out.status.success(), "./run {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim_end().to_owned()
}

#[test]
fn binaries_are_found_where_cargo_puts_them() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    assert_eq!(run(&["release-dir"], Some(elsewhere.path())), format!("{}/release", elsewhere.path().display()));
    assert_eq!(run(&["release-dir"], None), format!("{}/target/release", repo_root().display()));
}

#[test]
fn the_test_summary_counts_every_crate_and_the_skips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("output");
    std::fs::write(
        &output,
        "     Running tests/a.rs\n\
         test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 1.02s\n\
         test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n",
    )
    .expect("write output");
    let skips = dir.path().join("skipped");
    let summary = run(&["test-summary", output.to_str().expect("path"), skips.to_str().expect("path")], None);
    assert_eq!(summary, "tests: 13 passed, 2 failed, 3 ignored, 0 skipped");
    std::fs::write(&skips, "skipped: no postgresql-15 (apt-get install -y postgresql-15)\n").expect("write skips");
    let summary = run(&["test-summary", output.to_str().expect("path"), skips.to_str().expect("path")], None);
    assert_eq!(
        summary,
        "tests: 13 passed, 2 failed, 3 ignored, 1 skipped\n  skipped: no postgresql-15 (apt-get install -y postgresql-15)"
    );
    // A test binary that crashed prints no "test result:" line: cargo's status says it.
    let args = ["test-summary", output.to_str().expect("path"), skips.to_str().expect("path"), "101"];
    assert!(run(&args, None).starts_with("tests: 13 passed, 2 failed, 3 ignored, 1 skipped; cargo test exited 101\n"));
}
