//! The status report every service answers: name, pid, version, start, memory, state, node,
//! links, counters (carried over restarts by the process's `Tally`), gauges and engines.

use crate::home::ServiceKind;
use crate::tally::Tally;
use netmachine_schema::service_capnp::service_status;
use netmachine_schema::Identity;

/// A gauge about one thing: its name, what the label names, the thing, and the value.
pub type Labelled = (&'static str, &'static str, String, u64);

/// What one service says about itself.
pub struct StatusReport<'a> {
    pub kind: ServiceKind,
    pub node: Option<Identity>,
    /// What the service does not do yet, or anything else the operator should know.
    pub note: &'a str,
    pub links: Vec<(&'static str, bool)>,
    /// Counts that only grow.
    pub counters: Vec<(&'static str, u64)>,
    /// Values that go up and down: queue lengths, connections, what is held.
    pub gauges: Vec<(&'static str, u64)>,
    pub labelled: Vec<Labelled>,
    pub engines: Vec<Identity>,
}

impl StatusReport<'_> {
    pub fn write(&self, mut status: service_status::Builder<'_>) {
        status.set_name(self.kind.name());
        status.set_pid(std::process::id());
        status.set_state("up");
        status.set_version(env!("CARGO_PKG_VERSION"));
        status.set_resident_bytes(resident_bytes());
        if let Some(node) = self.node {
            status.set_node(&node.0);
        }
        status.set_note(self.note);
        let mut links = status.reborrow().init_links(self.links.len() as u32);
        for (i, (service, connected)) in self.links.iter().enumerate() {
            let mut link = links.reborrow().get(i as u32);
            link.set_service(*service);
            link.set_connected(*connected);
        }
        let counters: Vec<(String, u64)> = match Tally::current() {
            Some(tally) => {
                status.set_starts(tally.starts());
                status.set_started_ms(tally.started_ms());
                tally.totals(&self.counters)
            }
            None => self.counters.iter().map(|(name, value)| (name.to_string(), *value)).collect(),
        };
        let mut list = status.reborrow().init_counters(counters.len() as u32);
        for (i, (name, value)) in counters.iter().enumerate() {
            let mut counter = list.reborrow().get(i as u32);
            counter.set_name(name);
            counter.set_value(*value);
        }
        let mut gauges = status.reborrow().init_gauges(self.gauges.len() as u32);
        for (i, (name, value)) in self.gauges.iter().enumerate() {
            let mut gauge = gauges.reborrow().get(i as u32);
            gauge.set_name(*name);
            gauge.set_value(*value);
        }
        let mut labelled = status.reborrow().init_labelled(self.labelled.len() as u32);
        for (i, (name, label, key, value)) in self.labelled.iter().enumerate() {
            let mut gauge = labelled.reborrow().get(i as u32);
            gauge.set_name(*name);
            gauge.set_label(*label);
            gauge.set_key(key);
            gauge.set_value(*value);
        }
        let mut engines = status.init_engines(self.engines.len() as u32);
        for (i, engine) in self.engines.iter().enumerate() {
            engines.set(i as u32, &engine.0);
        }
    }
}

/// This process's resident memory in bytes (0 where /proc cannot tell).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}
