//! `tidegate bench compare` in a very short mode: both systems run on a real
//! mosquitto (collectd 5.12 from Debian, Tidegate with a real
//! VictoriaMetrics), the table has every row, and Tidegate's books balance
//! against the feed's ledger to the point.

use std::process::Command;

use tidegate_e2e::{bin, program};

/// The numbers of the row that starts with `name`.
fn row(table: &str, name: &str) -> Vec<f64> {
    let line = table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{table}"));
    line[name.len()..]
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn compare_short_run_balances_tidegates_books_and_prints_every_row() {
    // Not `.tmpXXXX`: collectd refuses to create directories under a dot.
    let dir = tempfile::Builder::new()
        .prefix("compare-")
        .tempdir()
        .unwrap();
    let out = Command::new(bin("tidegate"))
        .args([
            "bench",
            "compare",
            "--series",
            "20",
            "--rate",
            "2000",
            "--points",
            "4000",
            "--sweep",
            "3000",
            "--sweep-seconds",
            "1",
        ])
        .arg("--collectd")
        .arg(program("collectd", "collectd-core"))
        .arg("--victoria")
        .arg(program("victoria-metrics", "victoria-metrics"))
        .arg("--firmware-sim")
        .arg(bin("firmware-sim"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{table}\n{stderr}");
    let header = table
        .lines()
        .find(|l| l.contains("ratio t/c"))
        .unwrap_or_else(|| panic!("no table header in:\n{table}"));
    assert!(header.contains("tidegate") && header.contains("collectd"));
    // Tidegate: every point sent, received, stored once, in order, unaltered.
    assert_eq!(row(&table, "points sent")[0], 4000.0, "{table}");
    assert_eq!(row(&table, "points received")[0], 4000.0, "{table}");
    assert_eq!(row(&table, "points stored")[0], 4000.0, "{table}");
    for name in [
        "points lost",
        "points duplicated",
        "points reordered",
        "points altered or unknown",
    ] {
        assert_eq!(row(&table, name)[0], 0.0, "{name}\n{table}");
    }
    assert_eq!(
        row(&table, "points the sink (VictoriaMetrics) holds")[0],
        4000.0,
        "{table}"
    );
    // collectd took part: it stored something, against the same feed.
    assert_eq!(row(&table, "points sent")[1], 4000.0, "{table}");
    assert!(row(&table, "points stored")[1] > 0.0, "{table}");
    // Figures for both, and a ratio.
    for name in [
        "CPU s per million points",
        "peak RSS, MiB",
        "disk bytes per point (collectd: csv)",
    ] {
        let r = row(&table, name);
        assert_eq!(r.len(), 3, "{name}: {r:?}\n{table}");
        assert!(r[0] > 0.0 && r[1] > 0.0, "{name}: {r:?}\n{table}");
    }
    assert!(
        row(&table, "drain to the sink, points/s")[0] > 0.0,
        "{table}"
    );
    // The sweep ran for both systems.
    let sweep: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("tidegate ") || l.starts_with("collectd "))
        .collect();
    assert_eq!(sweep.len(), 2, "{table}");
}
