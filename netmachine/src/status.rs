//! `netmachine status`: asks each of the five services for its status over its socket
//! (`snapshot::gather`); a service that does not answer within a second is `down`. Once, as
//! text or JSON; `--watch` redraws every interval with what changed since the last reading,
//! as AeronStat does; `--wait` waits until every service is up and linked.

use netmachine_schema::time::now_ms;
use netmachine_service::snapshot::{self, ServiceSnapshot};
use netmachine_service::{NodeHome, ServiceKind};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What `netmachine status` was asked for.
pub struct StatusArgs {
    pub json: bool,
    /// Redraw at this interval until interrupted.
    pub watch: Option<Duration>,
    /// Wait up to this long for every service to be up with its links connected.
    pub wait: Option<Duration>,
    /// Only this service.
    pub service: Option<ServiceKind>,
}

fn service_json(s: &ServiceSnapshot, now_ms: u64) -> Value {
    let pairs = |list: &[(String, u64)]| list.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect::<Map<_, _>>();
    match &s.down {
        Some(error) => json!({"name": s.kind.name(), "pid": null, "state": "down", "error": error}),
        None => json!({
            "name": s.kind.name(),
            "pid": s.pid,
            "state": "up",
            "version": s.version,
            "uptime_s": now_ms.saturating_sub(s.started_ms) / 1000,
            "starts": s.starts,
            "resident_bytes": s.resident_bytes,
            "node": s.node.map(|n| n.to_string()),
            "note": s.note,
            "links": s.links.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect::<Map<_, _>>(),
            "counters": pairs(&s.counters),
            "gauges": pairs(&s.gauges),
            "labelled": s.labelled.iter().map(|(name, label, key, value)| json!({"name": name, label: key, "value": value})).collect::<Vec<_>>(),
            "engines": s.engines.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        }),
    }
}

/// The whole node's status as one JSON object.
pub async fn node_status(home: &NodeHome) -> Value {
    status_json(home, &snapshot::gather(home).await)
}

fn status_json(home: &NodeHome, services: &[ServiceSnapshot]) -> Value {
    let now = now_ms();
    let router = services.iter().find(|s| s.kind == ServiceKind::Router && s.is_up());
    let node = router
        .and_then(|r| r.node)
        .or_else(|| home.node_identity().ok().flatten())
        .map(|n| n.to_string());
    let engines: Vec<String> = router.map(|r| r.engines.iter().map(|e| e.to_string()).collect()).unwrap_or_default();
    let drops: Map<String, Value> = router
        .map(|r| {
            r.counters
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("dropped_").map(|reason| (reason.to_string(), Value::from(*v))))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "node": node,
        "home": home.root.display().to_string(),
        "services": services.iter().map(|s| service_json(s, now)).collect::<Vec<_>>(),
        "engines": engines,
        "drops": drops,
    })
}

/// Prints the status; exits 0 when every service is up, 3 when some are down (or `--wait` ran
/// out), 2 on bad config or a home that does not exist.
pub fn run(root: &Path, set: &[String], args: StatusArgs) -> ExitCode {
    if !root.is_dir() {
        eprintln!("netmachine: there is no node home at {} (`netmachine up` makes one; --home or NETMACHINE_HOME choose another)", root.display());
        return ExitCode::from(2);
    }
    let home = match NodeHome::load(root, set) {
        Ok(home) => home,
        Err(error) => {
            eprintln!("netmachine: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = crate::node_client::run_local(async {
        if let Some(kind) = args.service {
            let s = snapshot::ask(&home, kind).await;
            match (&s.down, args.json) {
                (_, true) => println!("{}", service_json(&s, now_ms())),
                (None, false) => println!("{} up, pid {}", kind.name(), s.pid),
                (Some(why), false) => println!("{} down: {why}", kind.name()),
            }
            return Ok(s.is_up());
        }
        if let Some(limit) = args.wait {
            return Ok(wait_ready(&home, limit).await);
        }
        let mut previous: Option<Vec<ServiceSnapshot>> = None;
        loop {
            let services = snapshot::gather(&home).await;
            match (args.json, args.watch) {
                (true, _) => println!("{}", status_json(&home, &services)),
                (false, None) => print_text(&status_json(&home, &services)),
                (false, Some(every)) => print_watch(&home, &services, previous.as_deref(), every),
            }
            let all_up = services.iter().all(ServiceSnapshot::is_up);
            let Some(every) = args.watch else { return Ok(all_up) };
            previous = Some(services);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = netmachine_service::process::stop_requested() => return Ok(all_up),
            }
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(error) => {
            eprintln!("netmachine: {}", crate::one_sentence(&error));
            ExitCode::FAILURE
        }
    }
}

/// Waits until every service is up with its links connected; says what is missing if `limit`
/// runs out first.
async fn wait_ready(home: &NodeHome, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let services = snapshot::gather(home).await;
        if services.iter().all(ServiceSnapshot::is_ready) {
            println!("node ready: all {} services up and linked", services.len());
            return true;
        }
        if start.elapsed() >= limit {
            for s in services.iter().filter(|s| !s.is_ready()) {
                let why = match &s.down {
                    Some(error) => error.clone(),
                    None => {
                        let missing: Vec<&str> = s.links.iter().filter(|(_, up)| !up).map(|(l, _)| l.as_str()).collect();
                        format!("up, but not linked to {}", missing.join(", "))
                    }
                };
                eprintln!("netmachine: {} not ready after {} s: {why}", s.kind.name(), limit.as_secs());
            }
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_text(status: &Value) {
    println!("node  {}", status["node"].as_str().unwrap_or("(no key yet)"));
    println!("home  {}", status["home"].as_str().unwrap_or(""));
    for service in status["services"].as_array().into_iter().flatten() {
        let pid = service["pid"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let detail = match service["state"].as_str() {
            Some("up") => {
                let restarts = service["starts"].as_u64().unwrap_or(1).saturating_sub(1);
                let memory = service["resident_bytes"].as_u64().unwrap_or(0) >> 20;
                let uptime = human_duration(service["uptime_s"].as_u64().unwrap_or(0));
                let note = service["note"].as_str().unwrap_or("");
                format!("up {uptime:<8} restarts {restarts:<3} {memory:>4} MiB  {note}")
            }
            _ => service["error"].as_str().unwrap_or("").to_string(),
        };
        println!("{:<15} {:<5} pid {:<8} {}", service["name"].as_str().unwrap_or(""), service["state"].as_str().unwrap_or(""), pid, detail);
    }
    let engines = status["engines"].as_array().map(Vec::len).unwrap_or(0);
    println!("engines attached: {engines}");
    for engine in status["engines"].as_array().into_iter().flatten() {
        println!("  {}", engine.as_str().unwrap_or(""));
    }
    let drops: Vec<String> = status["drops"].as_object().into_iter().flatten().map(|(reason, n)| format!("{reason}={n}")).collect();
    println!("drops: {}", drops.join(" "));
}

/// One screen of `--watch`: each service's line, then every counter and gauge with its change
/// since the last screen.
fn print_watch(home: &NodeHome, services: &[ServiceSnapshot], previous: Option<&[ServiceSnapshot]>, every: Duration) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        print!("\x1b[2J\x1b[H");
    }
    print_text(&status_json(home, services));
    println!("every {} ms; Ctrl-C stops", every.as_millis());
    for s in services.iter().filter(|s| s.is_up()) {
        let before = previous.and_then(|p| p.iter().find(|b| b.kind == s.kind && b.pid == s.pid));
        println!("-- {}", s.kind.name());
        for (name, value) in s.counters.iter().chain(&s.gauges) {
            let change = before.and_then(|b| b.value(name)).map(|was| *value as i128 - was as i128).unwrap_or(0);
            let change = if change != 0 { format!("{change:+}") } else { String::new() };
            println!("  {name:<44} {value:>14} {change}");
        }
        for (name, label, key, value) in &s.labelled {
            println!("  {name}{{{label}={key}}} {value}");
        }
    }
}

fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}
