//! `netmachine-pubsub`: topics across nodes. The service attaches to its node's router as an
//! engine, serves the pubsub protocol and runs the pubsub core (`service`); its own RPC
//! interface reports its status and sends its notifications (`events`).

use netmachine_pubsub::core::history::HistoryLimits;
use netmachine_pubsub::core::Config;
use netmachine_service::config::PubSubConfig;
use netmachine_pubsub::service::{self, Shared};
use netmachine_schema::pubsub_capnp::pub_sub;
use netmachine_schema::service_capnp::service as status;
use netmachine_service::process::{self, Running, ServiceContext};
use netmachine_service::rpc::ConnectionStats;
use netmachine_service::status::StatusReport;
use netmachine_service::{NodeHome, ServiceKind};
use std::rc::Rc;

struct PubSubServer {
    home: NodeHome,
    stats: Rc<ConnectionStats>,
    shared: Rc<Shared>,
}

impl status::Server for PubSubServer {
    async fn status(self: Rc<Self>, _: status::StatusParams, mut results: status::StatusResults) -> capnp::Result<()> {
        let core = self.shared.core.borrow();
        let shell = &self.shared.counters;
        let publications = || core.publications().map(|(_, p)| p);
        let mut gauges: Vec<(&'static str, u64)> = vec![
            ("subscriptions", core.subscriptions().count() as u64),
            ("publications", core.publications().count() as u64),
            ("readers", publications().map(|p| p.readers.len() as u64).sum()),
            ("event_subscribers", self.shared.events.watchers.len() as u64),
        ];
        gauges.extend(self.stats.gauges());
        let mut counters: Vec<(&'static str, u64)> = vec![
            ("messages_unreadable", shell.messages_unreadable.get()),
            ("sends_refused", shell.sends_refused.get()),
            ("locates_failed", shell.locates_failed.get()),
            ("events_dropped_injected", shell.events_dropped_injected.get()),
            ("event_subscribers_dropped", self.shared.events.watchers.dropped()),
        ];
        counters.extend(core.counters().report());
        counters.extend(self.stats.counters());
        let config = core.config();
        let slow: Vec<String> = core.publications().filter_map(|(topic, p)| p.slowest(config).map(|reader| format!("{reader} on topic {topic}"))).collect();
        let note = match slow.is_empty() {
            true => String::new(),
            false => format!("slow readers (window full): {}", slow.join(", ")),
        };
        let engines = self.shared.engines.borrow().map(|(topics, peers)| vec![topics, peers]).unwrap_or_default();
        StatusReport {
            kind: ServiceKind::PubSub,
            node: self.home.node_identity().ok().flatten(),
            note: &note,
            links: vec![self.shared.store.state(), ("router", engines.len() == 2)],
            counters,
            gauges,
            labelled: vec![],
            engines,
        }
        .write(results.get().init_status());
        Ok(())
    }
}

impl pub_sub::Server for PubSubServer {
    async fn events(self: Rc<Self>, params: pub_sub::EventsParams, mut results: pub_sub::EventsResults) -> capnp::Result<()> {
        let subscription = self.shared.events.watchers.subscribe(params.get()?.get_sink()?)?;
        results.get().set_subscription(subscription);
        Ok(())
    }
}

/// The core's settings from the node's `[pubsub]` section.
fn core_config(section: &PubSubConfig) -> Config {
    let history = HistoryLimits { events: section.history_events as usize, bytes: section.history_bytes as usize, age: section.history_age_ms };
    Config { window_bytes: section.window_bytes as usize, history, heartbeat: section.heartbeat_ms, max_readers: section.max_readers as usize, ..Config::default() }
}

fn main() -> std::process::ExitCode {
    process::run(ServiceKind::PubSub, "netmachine pubsub: topics across nodes", |context: ServiceContext| async move {
        let shared = service::start(&context.home, core_config(&context.home.config.pubsub))?;
        let server = PubSubServer { home: context.home, stats: context.stats, shared: shared.clone() };
        let bootstrap = capnp_rpc::new_client::<pub_sub::Client, _>(server).client;
        Ok(Running::stopping_with(bootstrap, async move { shared.stop.notify_one() }))
    })
}
