//! The command line as an operator meets it: check-config and demo.

use std::process::Command;

use tidegate_e2e::bin;

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tidegate.example.toml")
}

#[test]
fn check_config_accepts_the_example_and_applies_env_overrides() {
    let out = Command::new(bin("tidegate"))
        .args(["check-config"])
        .arg(example())
        .env("TIDEGATE_STORE__FLUSH_INTERVAL", "7s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("flush_interval = \"7s\""), "{stdout}");
}

#[test]
fn check_config_names_a_misspelt_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example())
        .unwrap()
        .replace("baud = 115200", "baudrate = 115200");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin("tidegate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("baudrate"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[test]
fn demo_runs_and_summarises() {
    let out = Command::new(bin("tidegate"))
        .args(["demo", "--duration", "5s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("points stored"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 'points stored' line in:\n{stdout}"));
    assert!(stored > 0, "{stdout}");
}
