//! Log output: `--log-format json` / `STRATA_LOG_FORMAT=json` write one JSON object a line.

use std::process::Command;

fn stderr_lines(args: &[&str], envs: &[(&str, &str)]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env_remove("STRATA_LOG_FORMAT")
        .envs(envs.iter().copied())
        .output()
        .expect("run strata");
    String::from_utf8_lossy(&out.stderr).lines().map(String::from).collect()
}

// Port 1 on loopback: nothing listens, so the command fails fast after logging its start.
const ARGS: [&str; 3] = ["status", "--url", "redis://127.0.0.1:1"];

#[test]
fn json_logs_are_one_object_a_line() {
    for (args, envs) in [
        ([&["--log-format", "json"][..], &ARGS].concat(), vec![("STRATA_LOG", "debug")]),
        (ARGS.to_vec(), vec![("STRATA_LOG", "debug"), ("STRATA_LOG_FORMAT", "json")]),
    ] {
        let lines = stderr_lines(&args, &envs);
        let started = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "strata command started")
            .unwrap_or_else(|| panic!("no JSON start event in {lines:?}"));
        assert_eq!(started["level"], "DEBUG", "{started}");
        assert_eq!(started["fields"]["command"], "status", "{started}");
    }
}

#[test]
fn text_logs_by_default_and_quiet_without_strata_log() {
    let lines = stderr_lines(&ARGS, &[("STRATA_LOG", "debug")]);
    let started = lines.iter().find(|l| l.contains("strata command started")).expect("start event");
    assert!(serde_json::from_str::<serde_json::Value>(started).is_err() && started.contains("DEBUG"), "{started}");
    let quiet = stderr_lines(&ARGS, &[("STRATA_LOG", "warn")]);
    assert!(!quiet.iter().any(|l| l.contains("strata command started")), "{quiet:?}");
}
