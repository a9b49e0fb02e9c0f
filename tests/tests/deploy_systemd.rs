//! The systemd units as shipped: `systemd-analyze verify` finds nothing to say about any of the
//! five instances (the unit pointed at the binaries this test was built with), and
//! `systemd-analyze security` rates each 3.0 or lower. Then for real: in a container whose
//! PID 1 is systemd (a Debian root file system made by debootstrap), `install` starts the
//! node, every service reports ready, an engine talks through the rings, a killed router and a
//! stalled identity store are restarted by systemd, and `install --remove` takes it away.

use netmachine_service::ServiceKind;
use netmachine_tests::{bin_dir, wait_until, TempHome};
use std::process::Command;
use std::time::Duration;

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

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

/// A Debian root file system with systemd, made once by debootstrap into the target directory.
fn systemd_rootfs() -> std::path::PathBuf {
    let rootfs = bin_dir().parent().expect("target directory").join("systemd-rootfs");
    if !rootfs.join("sbin/init").exists() {
        let _ = std::fs::remove_dir_all(&rootfs);
        let made = Command::new("debootstrap")
            .args(["--variant=minbase", "--include=systemd,systemd-sysv,dbus,passwd", "bookworm"])
            .arg(&rootfs)
            .arg("http://deb.debian.org/debian")
            .output()
            .expect("debootstrap (scripts/test installs it)");
        assert!(made.status.success(), "debootstrap: {}", String::from_utf8_lossy(&made.stderr));
    }
    rootfs
}

/// A container whose PID 1 is systemd, removed with its image when dropped.
struct SystemdHost {
    container: String,
    image: String,
}

impl SystemdHost {
    fn boot() -> SystemdHost {
        let image = format!("netmachine-systemd-test:{}", std::process::id());
        let imported = Command::new("sh")
            .arg("-c")
            .arg(format!("tar -C '{}' -c . | docker import - {image}", systemd_rootfs().display()))
            .output()
            .unwrap();
        assert!(imported.status.success(), "docker import: {}", String::from_utf8_lossy(&imported.stderr));
        let run = docker(&[
            "run", "-d", "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "--cgroupns=private",
            "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp", &image, "/sbin/init",
        ]);
        let host = SystemdHost { container: String::from_utf8_lossy(&run.stdout).trim().to_string(), image };
        assert!(run.status.success(), "docker run: {}", String::from_utf8_lossy(&run.stderr));
        wait_until("systemd is up in the container", Duration::from_secs(60), || {
            matches!(host.sh("systemctl is-system-running").as_str(), "running" | "degraded")
        });
        host
    }

    /// Runs `script` with bash in the container; its standard output, trimmed.
    fn sh(&self, script: &str) -> String {
        let out = docker(&["exec", &self.container, "bash", "-c", script]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.container]);
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

#[test]
fn under_systemd_the_units_install_start_ready_restart_on_a_kill_and_a_stall_and_uninstall() {
    if !netmachine_tests::containers::docker_present() {
        return;
    }
    let host = SystemdHost::boot();
    // The checkout as `install` expects it: deploy/ and the binaries under target/release.
    host.sh("mkdir -p /src/target/release");
    let copy = |from: &std::path::Path, to: &str| {
        let copied = docker(&["cp", from.to_str().unwrap(), &format!("{}:{to}", host.container)]);
        assert!(copied.status.success(), "docker cp {}", from.display());
    };
    copy(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")), "/src/");
    for binary in ["netmachine"].into_iter().chain(ServiceKind::ALL.map(ServiceKind::binary)) {
        copy(&bin_dir().join(binary), "/src/target/release/");
    }
    // This container may not make user namespaces, which PrivateUsers= needs; on a host it
    // may, and `systemd-analyze security` above counts the setting.
    host.sh("mkdir -p /etc/systemd/system/netmachine@.service.d && printf '[Service]\\nPrivateUsers=no\\n' > /etc/systemd/system/netmachine@.service.d/container.conf");
    let installed = docker(&["exec", &host.container, "bash", "/src/deploy/systemd/install"]);
    assert!(installed.status.success(), "install: {}", String::from_utf8_lossy(&installed.stderr));
    let state = |kind: ServiceKind| {
        let unit = format!("netmachine@{}", kind.name());
        format!("{} {}", host.sh(&format!("systemctl is-active {unit}")), host.sh(&format!("systemctl show -p StatusText --value {unit}")))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ServiceKind::ALL.iter().all(|k| state(*k) == "active serving") {
        let states: Vec<String> = ServiceKind::ALL.iter().map(|k| format!("{}: {}", k.name(), state(*k))).collect();
        assert!(std::time::Instant::now() < deadline, "not every service is ready and serving: {states:?}\n{}", host.sh("journalctl --no-pager -n 30"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let n = "runuser -u netmachine -- /usr/local/bin/netmachine --home /var/lib/netmachine";
    host.sh("runuser -u netmachine -- /usr/local/bin/netmachine key new /tmp/bob.key > /tmp/bob.id; runuser -u netmachine -- /usr/local/bin/netmachine key new /tmp/alice.key");
    host.sh(&format!("({n} listen --echo --key /tmp/bob.key > /tmp/listen.log 2>&1 &)"));
    let ask = |body: &str| host.sh(&format!("for i in $(seq 50); do {n} request --key /tmp/alice.key --to $(cat /tmp/bob.id) '{body}' 2>/dev/null && break; sleep 0.2; done"));
    assert_eq!(ask("under systemd"), "under systemd");
    assert!(host.sh(&format!("{n} status --json")).contains("\"engines_on_rings\":1"), "the engine is on the rings beside the hardened router");

    // kill -9 of the router: systemd starts it again, the others keep their processes.
    let pid = |kind: ServiceKind| host.sh(&format!("systemctl show -p MainPID --value netmachine@{}", kind.name()));
    let (router, transport) = (pid(ServiceKind::Router), pid(ServiceKind::Transport));
    host.sh(&format!("kill -9 {router}"));
    wait_until("the router is started again and ready", Duration::from_secs(30), || {
        pid(ServiceKind::Router) != router && state(ServiceKind::Router) == "active serving"
    });
    assert_eq!(pid(ServiceKind::Transport), transport, "the transport ran on");
    assert_eq!(ask("after kill -9"), "after kill -9");

    // A stalled event loop stops feeding the watchdog: systemd restarts that service.
    let store = pid(ServiceKind::IdentityStore);
    host.sh(&format!("kill -STOP {store}"));
    wait_until("the stalled identity store is restarted by the watchdog", Duration::from_secs(40), || {
        pid(ServiceKind::IdentityStore) != store && state(ServiceKind::IdentityStore) == "active serving"
    });
    assert!(host.sh("journalctl --no-pager -u netmachine@identity-store").contains("Watchdog timeout"));

    let removed = docker(&["exec", &host.container, "bash", "/src/deploy/systemd/install", "--remove"]);
    assert!(removed.status.success(), "install --remove: {}", String::from_utf8_lossy(&removed.stderr));
    assert_eq!(host.sh("systemctl list-units --all --no-legend 'netmachine*' | wc -l"), "0");
    assert_eq!(host.sh("ls /usr/local/bin | grep -c netmachine"), "0");
    assert!(host.sh("ls /var/lib/netmachine").contains("node.key"), "the node home is kept");
}
