//! The systemd units as shipped: `systemd-analyze verify` finds nothing to say about any of the
//! five instances (the unit pointed at the binaries this test was built with), and
//! `systemd-analyze security` rates each 3.0 or lower. What the services tell systemd is
//! tested against the real binaries in `operations.rs`.

use netmachine_service::ServiceKind;
use netmachine_tests::{bin_dir, TempHome};
use std::process::Command;

#[test]
fn each_unit_verifies_cleanly_and_is_rated_3_or_lower() {
    let Ok(analyze) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing: scripts/test installs it (Debian package systemd)");
    };
    assert!(analyze.status.success());
    let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/netmachine@.service")).unwrap();
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/netmachine.target");
    let units = TempHome::new();
    std::fs::create_dir_all(&units.0).unwrap();
    std::fs::copy(target, units.0.join("netmachine.target")).unwrap();
    for kind in ServiceKind::ALL {
        let unit = units.0.join(format!("netmachine@{}.service", kind.name()));
        let binary = bin_dir().join(kind.binary());
        std::fs::write(&unit, template.replace("/usr/local/bin/netmachine-%i", binary.to_str().unwrap())).unwrap();
        let verify = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && said.trim().is_empty(), "verify {}: {said}", kind.name());
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=30", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&security.stdout);
        let overall = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default();
        assert!(security.status.success(), "{}: {overall}", kind.name());
        let level: f64 = overall.split(": ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).expect("a level");
        assert!(level <= 3.0, "{overall}");
        eprintln!("{overall}");
    }
}
