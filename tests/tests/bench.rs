//! `tidegate bench sync` end to end: a small backlog drained into its own
//! VictoriaMetrics with both protocols, and every point found there.

use std::process::Command;

use tidegate_e2e::{bin, program};

#[test]
fn bench_sync_drains_every_point_with_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("tidegate"))
        .args(["bench", "sync", "--points", "200000", "--series", "100"])
        .arg("--victoria")
        .arg(program("victoria-metrics", "victoria-metrics"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let row = |name: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name:?} in:\n{stdout}"));
        line[name.len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let header = stdout
        .lines()
        .find(|l| l.contains("line protocol"))
        .unwrap_or_else(|| panic!("no table in:\n{stdout}"));
    assert!(header.contains("remote write"), "{header}");
    assert_eq!(
        row("samples victoria-metrics holds"),
        ["200000", "200000"],
        "{stdout}"
    );
    for rate in row("drained, points/s") {
        assert!(rate.parse::<f64>().unwrap() > 0.0, "{stdout}");
    }
    for bytes in row("bytes on the wire per point") {
        let b: f64 = bytes.parse().unwrap();
        assert!(b > 0.5 && b < 60.0, "{stdout}");
    }
}
