//! `netmachine status`: asks each of the five services for its status over its socket. A
//! service that does not answer within a second is reported `down`.

use netmachine_schema::service_capnp::service;
use netmachine_schema::Identity;
use netmachine_service::{rpc, NodeHome, ServiceKind};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// One service's answer, as JSON.
async fn ask(home: &NodeHome, kind: ServiceKind) -> Value {
    let socket = home.socket(kind);
    let answer = async {
        let (client, _driver) = rpc::connect::<service::Client>(&socket, home.config.rpc_word_limit())
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let response = client.status_request().send().promise.await.map_err(|e| e.to_string())?;
        let status = response.get().and_then(|r| r.get_status()).map_err(|e| e.to_string())?;
        status_json(status).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(ANSWER_WAIT, answer).await {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => json!({"name": kind.name(), "pid": null, "state": "down", "error": error}),
        Err(_) => json!({"name": kind.name(), "pid": null, "state": "down", "error": "no answer within 1 s"}),
    }
}

fn status_json(status: netmachine_schema::service_capnp::service_status::Reader<'_>) -> capnp::Result<Value> {
    let text = |t: capnp::text::Reader<'_>| t.to_string().unwrap_or_default();
    let mut links = Map::new();
    for link in status.get_links()?.iter() {
        links.insert(text(link.get_service()?), link.get_connected().into());
    }
    let mut counters = Map::new();
    for counter in status.get_counters()?.iter() {
        counters.insert(text(counter.get_name()?), counter.get_value().into());
    }
    let engines: Vec<Value> = status
        .get_engines()?
        .iter()
        .filter_map(|e| e.ok().and_then(|e| Identity::from_slice("engine", e).ok()))
        .map(|e| e.to_string().into())
        .collect();
    let node = Identity::from_slice("node", status.get_node()?).map(|n| n.to_string()).ok();
    Ok(json!({
        "name": text(status.get_name()?),
        "pid": status.get_pid(),
        "state": text(status.get_state()?),
        "node": node,
        "note": text(status.get_note()?),
        "links": links,
        "counters": counters,
        "engines": engines,
    }))
}

/// The whole node's status as one JSON object.
pub async fn node_status(home: &NodeHome) -> Value {
    let services: Vec<Value> = futures::future::join_all(ServiceKind::ALL.map(|kind| ask(home, kind))).await;
    let router = services.iter().find(|s| s["name"] == "router");
    let node = router
        .and_then(|r| r["node"].as_str().map(str::to_string))
        .or_else(|| home.node_identity().ok().flatten().map(|n| n.to_string()));
    let engines = router.map(|r| r["engines"].clone()).unwrap_or_else(|| json!([]));
    let drops: Map<String, Value> = router
        .and_then(|r| r["counters"].as_object())
        .map(|c| {
            c.iter()
                .filter_map(|(k, v)| k.strip_prefix("dropped_").map(|reason| (reason.to_string(), v.clone())))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "node": node,
        "home": home.root.display().to_string(),
        "services": services,
        "engines": engines,
        "drops": drops,
    })
}

/// Prints the status; exits 0 when every service is up, 3 when some are down, 2 on bad config.
pub fn run(root: &Path, set: &[String], json_output: bool) -> ExitCode {
    let home = match NodeHome::load(root, set) {
        Ok(home) => home,
        Err(error) => {
            eprintln!("netmachine: {error}");
            return ExitCode::from(2);
        }
    };
    let status = match crate::node_client::run_local(async { Ok(node_status(&home).await) }) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("netmachine: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if json_output {
        println!("{status}");
    } else {
        print_text(&status);
    }
    let all_up = status["services"].as_array().is_some_and(|s| s.iter().all(|s| s["state"] == "up"));
    if all_up { ExitCode::SUCCESS } else { ExitCode::from(3) }
}

fn print_text(status: &Value) {
    println!("node  {}", status["node"].as_str().unwrap_or("(no key yet)"));
    println!("home  {}", status["home"].as_str().unwrap_or(""));
    for service in status["services"].as_array().into_iter().flatten() {
        let pid = service["pid"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let detail = match service["state"].as_str() {
            Some("up") => service["note"].as_str().unwrap_or("").to_string(),
            _ => service["error"].as_str().unwrap_or("").to_string(),
        };
        println!(
            "{:<15} {:<5} pid {:<8} {}",
            service["name"].as_str().unwrap_or(""),
            service["state"].as_str().unwrap_or(""),
            pid,
            detail
        );
    }
    let engines = status["engines"].as_array().map(Vec::len).unwrap_or(0);
    println!("engines attached: {engines}");
    for engine in status["engines"].as_array().into_iter().flatten() {
        println!("  {}", engine.as_str().unwrap_or(""));
    }
    let drops: Vec<String> = status["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(reason, n)| format!("{reason}={n}"))
        .collect();
    println!("drops: {}", drops.join(" "));
}
