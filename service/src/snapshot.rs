//! What each of a node's five services says about itself right now, asked over its socket:
//! the one reading that `netmachine status` prints and the metrics endpoint exports. A
//! service that does not answer within `ANSWER_WAIT` is `down`, with why.

use crate::home::{NodeHome, ServiceKind};
use netmachine_schema::service_capnp::{service, service_status};
use netmachine_schema::Identity;
use std::time::Duration;

/// How long a service gets to answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// One service's status.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSnapshot {
    pub kind: ServiceKind,
    /// Why the service did not answer; `None` when it is up.
    pub down: Option<String>,
    pub pid: u32,
    pub version: String,
    pub started_ms: u64,
    pub starts: u64,
    pub resident_bytes: u64,
    pub node: Option<Identity>,
    pub note: String,
    pub links: Vec<(String, bool)>,
    pub counters: Vec<(String, u64)>,
    pub gauges: Vec<(String, u64)>,
    /// Gauges about one thing each: name, label, the thing, value.
    pub labelled: Vec<(String, String, String, u64)>,
    pub engines: Vec<Identity>,
}

impl ServiceSnapshot {
    fn down(kind: ServiceKind, why: String) -> Self {
        ServiceSnapshot {
            kind,
            down: Some(why),
            pid: 0,
            version: String::new(),
            started_ms: 0,
            starts: 0,
            resident_bytes: 0,
            node: None,
            note: String::new(),
            links: vec![],
            counters: vec![],
            gauges: vec![],
            labelled: vec![],
            engines: vec![],
        }
    }

    pub fn is_up(&self) -> bool {
        self.down.is_none()
    }

    /// Up, with every link to another service connected.
    pub fn is_ready(&self) -> bool {
        self.is_up() && self.links.iter().all(|(_, connected)| *connected)
    }

    /// The value of counter or gauge `name`, if the service reported it.
    pub fn value(&self, name: &str) -> Option<u64> {
        self.counters.iter().chain(&self.gauges).find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub fn read(kind: ServiceKind, status: service_status::Reader<'_>) -> capnp::Result<Self> {
        let text = |t: capnp::text::Reader<'_>| t.to_string().unwrap_or_default();
        let pairs = |list: capnp::struct_list::Reader<'_, netmachine_schema::service_capnp::counter::Owned>| {
            list.iter().map(|c| Ok((text(c.get_name()?), c.get_value()))).collect::<capnp::Result<Vec<_>>>()
        };
        let mut links = Vec::new();
        for link in status.get_links()?.iter() {
            links.push((text(link.get_service()?), link.get_connected()));
        }
        let mut labelled = Vec::new();
        for gauge in status.get_labelled()?.iter() {
            labelled.push((text(gauge.get_name()?), text(gauge.get_label()?), text(gauge.get_key()?), gauge.get_value()));
        }
        let engines = status.get_engines()?.iter().filter_map(|e| Identity::from_slice("engine", e.ok()?).ok()).collect();
        Ok(ServiceSnapshot {
            kind,
            down: None,
            pid: status.get_pid(),
            version: text(status.get_version()?),
            started_ms: status.get_started_ms(),
            starts: status.get_starts(),
            resident_bytes: status.get_resident_bytes(),
            node: Identity::from_slice("node", status.get_node()?).ok(),
            note: text(status.get_note()?),
            links,
            counters: pairs(status.get_counters()?)?,
            gauges: pairs(status.get_gauges()?)?,
            labelled,
            engines,
        })
    }
}

/// Asks service `kind` of `home` for its status.
pub async fn ask(home: &NodeHome, kind: ServiceKind) -> ServiceSnapshot {
    let socket = home.socket(kind);
    let answer = async {
        let (client, driver) = crate::rpc::connect::<service::Client>(&socket, home.config.rpc_word_limit())
            .await
            .map_err(|e| not_serving(&socket, &e))?;
        // The connection closes once the answer is read: dropping the client does not close
        // it, and a long-lived asker (the metrics endpoint) would pile them up.
        let _closes = AbortOnDrop(driver);
        let response = client.status_request().send().promise.await.map_err(|e| crate::rpc::reason(&e))?;
        let status = response.get().and_then(|r| r.get_status()).map_err(|e| crate::rpc::reason(&e))?;
        ServiceSnapshot::read(kind, status).map_err(|e| crate::rpc::reason(&e))
    };
    match tokio::time::timeout(ANSWER_WAIT, answer).await {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(why)) => ServiceSnapshot::down(kind, why),
        Err(_) => ServiceSnapshot::down(kind, format!("no answer within {} s", ANSWER_WAIT.as_secs())),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why nothing serves `socket`, in words.
fn not_serving(socket: &std::path::Path, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => format!("not running (no socket at {})", socket.display()),
        std::io::ErrorKind::ConnectionRefused => format!("not running (nothing serves {})", socket.display()),
        _ => format!("cannot connect to {}: {}", socket.display(), error),
    }
}

/// Every service of the node, in `ServiceKind::ALL` order.
pub async fn gather(home: &NodeHome) -> Vec<ServiceSnapshot> {
    let [a, b, c, d, e] = ServiceKind::ALL.map(|kind| ask(home, kind));
    let (a, b, c, d, e) = tokio::join!(a, b, c, d, e);
    vec![a, b, c, d, e]
}
