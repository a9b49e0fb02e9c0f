//! The status report every service answers: name, pid, state, node, links and counters.

use crate::home::ServiceKind;
use netmachine_schema::service_capnp::service_status;
use netmachine_schema::Identity;

/// What one service says about itself.
pub struct StatusReport<'a> {
    pub kind: ServiceKind,
    pub node: Option<Identity>,
    /// What the service does not do yet, or anything else the operator should know.
    pub note: &'a str,
    pub links: Vec<(&'static str, bool)>,
    pub counters: Vec<(&'static str, u64)>,
    pub engines: Vec<Identity>,
}

impl StatusReport<'_> {
    pub fn write(&self, mut status: service_status::Builder<'_>) {
        status.set_name(self.kind.name());
        status.set_pid(std::process::id());
        status.set_state("up");
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
        let mut counters = status.reborrow().init_counters(self.counters.len() as u32);
        for (i, (name, value)) in self.counters.iter().enumerate() {
            let mut counter = counters.reborrow().get(i as u32);
            counter.set_name(*name);
            counter.set_value(*value);
        }
        let mut engines = status.init_engines(self.engines.len() as u32);
        for (i, engine) in self.engines.iter().enumerate() {
            engines.set(i as u32, &engine.0);
        }
    }
}
