//! The node's metrics endpoint: on each `GET /metrics`, every service is asked for its status
//! (`snapshot::gather`) and the answers are exported in the Prometheus/OpenMetrics text format
//! with the `prometheus-client` crate. Served over plain HTTP/1.1 on `metrics.listen`, one
//! request per connection, by the router.
//!
//! Per service: `netmachine_service_up`, `_info` (version, pid), `_starts_total`,
//! `_restarts_total`, `_uptime_seconds`, `_resident_memory_bytes`, `_link_up`; then each of
//! its counters as `netmachine_<service>_<name>_total`, its gauges as
//! `netmachine_<service>_<name>`, and its gauges about one engine or node with that label.

use crate::home::NodeHome;
use crate::snapshot::{self, ServiceSnapshot};
use netmachine_schema::time::now_ms;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head read, and how long a client gets to send it.
const MAX_REQUEST_BYTES: usize = 8 << 10;
const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// Requests answered at once; a connection beyond them is closed unanswered.
const MAX_REQUESTS: usize = 16;

/// The text a scrape of `services` returns.
pub fn render(services: Vec<ServiceSnapshot>) -> String {
    let mut registry = Registry::with_prefix("netmachine");
    registry.register_collector(Box::new(Node { services, now_ms: now_ms() }));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// A node's snapshot, as the registry's one collector.
#[derive(Debug)]
struct Node {
    services: Vec<ServiceSnapshot>,
    now_ms: u64,
}

type Labels = Vec<(String, String)>;

impl Node {
    /// One family: its name, help and type, and each labelled value.
    fn family<M: EncodeMetric>(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        members: Vec<(Labels, M)>,
    ) -> Result<(), std::fmt::Error> {
        if members.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        if let [(labels, metric)] = members.as_slice() {
            if labels.is_empty() {
                return metric.encode(family);
            }
        }
        for (labels, metric) in members {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn per_service<M: EncodeMetric>(&self, value: impl Fn(&ServiceSnapshot) -> Option<M>) -> Vec<(Labels, M)> {
        self.services.iter().filter_map(|s| Some((service_label(s), value(s)?))).collect()
    }
}

/// `s` if it is up: a service that is down has no start, uptime or memory to show.
fn up(s: &ServiceSnapshot) -> Option<&ServiceSnapshot> {
    s.is_up().then_some(s)
}

fn service_label(s: &ServiceSnapshot) -> Labels {
    vec![("service".into(), s.kind.name().into())]
}

impl Collector for Node {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        Self::family(e, "service_up", "1 while the service answers on its socket", MetricType::Gauge, self.per_service(|s| Some(ConstGauge::new(i64::from(s.is_up())))))?;
        let info = self
            .services
            .iter()
            .filter(|s| s.is_up())
            .map(|s| {
                let mut labels = service_label(s);
                labels.extend([("version".into(), s.version.clone()), ("pid".into(), s.pid.to_string())]);
                (labels, ConstGauge::new(1i64))
            })
            .collect();
        Self::family(e, "service_info", "The running process: version and pid", MetricType::Gauge, info)?;
        Self::family(e, "service_starts", "Times the service started on this node home", MetricType::Counter, self.per_service(|s| Some(ConstCounter::new(up(s)?.starts))))?;
        Self::family(e, "service_restarts", "Starts after the first", MetricType::Counter, self.per_service(|s| Some(ConstCounter::new(up(s)?.starts.saturating_sub(1)))))?;
        let uptime = |s: &ServiceSnapshot| Some(ConstGauge::new(self.now_ms.saturating_sub(up(s)?.started_ms) as f64 / 1000.0));
        Self::family(e, "service_uptime_seconds", "Time since the process started", MetricType::Gauge, self.per_service(uptime))?;
        Self::family(e, "service_resident_memory_bytes", "The process's resident memory", MetricType::Gauge, self.per_service(|s| Some(ConstGauge::new(up(s)?.resident_bytes))))?;
        let links = self
            .services
            .iter()
            .flat_map(|s| s.links.iter().map(move |(to, connected)| (s, to, *connected)))
            .map(|(s, to, connected)| {
                let mut labels = service_label(s);
                labels.push(("link".into(), to.clone()));
                (labels, ConstGauge::new(i64::from(connected)))
            })
            .collect();
        Self::family(e, "service_link_up", "1 while the service's link to another is connected", MetricType::Gauge, links)?;
        for s in &self.services {
            let service = s.kind.name().replace('-', "_");
            let help = |name: &str| format!("{}: {}", s.kind.name(), name.replace('_', " "));
            for (name, value) in &s.counters {
                Self::family(e, &format!("{service}_{name}"), &help(name), MetricType::Counter, vec![(vec![], ConstCounter::new(*value))])?;
            }
            for (name, value) in &s.gauges {
                Self::family(e, &format!("{service}_{name}"), &help(name), MetricType::Gauge, vec![(vec![], ConstGauge::new(*value))])?;
            }
            let mut names: Vec<&String> = s.labelled.iter().map(|(name, ..)| name).collect();
            names.dedup();
            for name in names {
                let members = s
                    .labelled
                    .iter()
                    .filter(|(n, ..)| n == name)
                    .map(|(_, label, key, value)| (vec![(label.clone(), key.clone())], ConstGauge::new(*value)))
                    .collect();
                Self::family(e, &format!("{service}_{name}"), &help(name), MetricType::Gauge, members)?;
            }
        }
        Ok(())
    }
}

/// Serves `/metrics` on `listener` for as long as the returned future runs.
pub async fn serve(listener: TcpListener, home: NodeHome) {
    let answering = std::rc::Rc::new(std::cell::Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if answering.get() >= MAX_REQUESTS {
            tracing::debug!("metrics endpoint: {MAX_REQUESTS} requests in progress; a connection closed unanswered");
            continue;
        }
        answering.set(answering.get() + 1);
        let (home, answering) = (home.clone(), answering.clone());
        tokio::task::spawn_local(async move {
            if let Err(error) = answer(stream, &home).await {
                tracing::debug!(%error, "metrics endpoint: request not answered");
            }
            answering.set(answering.get() - 1);
        });
    }
}

/// Reads one request head and answers it: the metrics for `GET /metrics`, 404 for any other
/// path, 405 for any other method, 400 for a head that is not HTTP or too long.
async fn answer(mut stream: TcpStream, home: &NodeHome) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let complete = tokio::time::timeout(REQUEST_WAIT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(head.windows(4).any(|w| w == b"\r\n\r\n"))
    })
    .await
    .unwrap_or(Ok(false))?;
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or_default()).into_owned();
    let mut words = line.split(' ');
    let (status, body) = match (complete, words.next(), words.next().map(|p| p.split('?').next().unwrap_or(p))) {
        (false, ..) => ("400 Bad Request", "expected an HTTP request head\n".to_string()),
        (true, Some("GET"), Some("/metrics")) => ("200 OK", render(snapshot::gather(home).await)),
        (true, Some("GET"), _) => ("404 Not Found", "the metrics are at /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let content_type = match status {
        "200 OK" => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::ServiceKind;

    fn router(starts: u64) -> ServiceSnapshot {
        ServiceSnapshot {
            kind: ServiceKind::Router,
            down: None,
            pid: 42,
            version: "0.1.0".into(),
            started_ms: now_ms() - 5_000,
            starts,
            resident_bytes: 1 << 20,
            node: None,
            note: String::new(),
            links: vec![("transport".into(), true), ("identity-store".into(), false)],
            counters: vec![("messages_accepted".into(), 7)],
            gauges: vec![("engines_attached".into(), 2)],
            labelled: vec![("engine_queue_depth".into(), "engine".into(), "ab".into(), 3), ("engine_queue_depth".into(), "engine".into(), "cd".into(), 0)],
            engines: vec![],
        }
    }

    #[test]
    fn every_kind_of_value_is_exported_under_its_service() {
        let mut storage = router(1);
        storage.kind = ServiceKind::Storage;
        storage.down = Some("not running".into());
        (storage.links, storage.counters, storage.gauges, storage.labelled) = (vec![], vec![], vec![], vec![]);
        let text = render(vec![router(3), storage]);
        for line in [
            "netmachine_service_up{service=\"router\"} 1",
            "netmachine_service_up{service=\"storage\"} 0",
            "netmachine_service_info{service=\"router\",version=\"0.1.0\",pid=\"42\"} 1",
            "netmachine_service_restarts_total{service=\"router\"} 2",
            "netmachine_service_resident_memory_bytes{service=\"router\"} 1048576",
            "netmachine_service_link_up{service=\"router\",link=\"identity-store\"} 0",
            "# TYPE netmachine_router_messages_accepted counter",
            "netmachine_router_messages_accepted_total 7",
            "# TYPE netmachine_router_engines_attached gauge",
            "netmachine_router_engines_attached 2",
            "netmachine_router_engine_queue_depth{engine=\"ab\"} 3",
            "netmachine_router_engine_queue_depth{engine=\"cd\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        let uptime = text.lines().find(|l| l.starts_with("netmachine_service_uptime_seconds{service=\"router\"}")).unwrap();
        let seconds: f64 = uptime.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((5.0..60.0).contains(&seconds), "{uptime}");
        // A service that is down has no start, uptime or memory to show.
        assert!(!text.contains("netmachine_service_uptime_seconds{service=\"storage\"}"), "{text}");
    }
}
