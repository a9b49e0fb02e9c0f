//! A service whose behaviour a later version brings (storage today): it
//! runs, keeps its links to the services it will need, answers status with a note saying what
//! it does not do yet, and answers every other method with Cap'n Proto's `unimplemented`.

use crate::home::{NodeHome, ServiceKind};
use crate::link::Link;
use crate::rpc::ConnectionStats;
use crate::status::StatusReport;
use netmachine_schema::service_capnp::service;
use netmachine_schema::storage_capnp::storage;
use std::rc::Rc;

pub struct Standby {
    kind: ServiceKind,
    home: NodeHome,
    stats: Rc<ConnectionStats>,
    note: &'static str,
    links: Vec<Link<service::Client>>,
}

impl Standby {
    /// Starts linking to `needs`. Must run inside a `LocalSet`.
    pub fn new(context: crate::process::ServiceContext, needs: &[ServiceKind], note: &'static str) -> Self {
        let links = needs
            .iter()
            .map(|&kind| {
                let path = context.home.socket(kind);
                Link::start(kind, path, context.home.config.rpc_word_limit(), |_| async { Ok(()) })
            })
            .collect();
        Standby { kind: context.kind, home: context.home, stats: context.stats, note, links }
    }
}

impl service::Server for Standby {
    async fn status(self: Rc<Self>, _: service::StatusParams, mut results: service::StatusResults) -> capnp::Result<()> {
        StatusReport {
            kind: self.kind,
            node: self.home.node_identity().ok().flatten(),
            note: self.note,
            links: self.links.iter().map(Link::state).collect(),
            counters: self.stats.counters().to_vec(),
            engines: vec![],
        }
        .write(results.get().init_status());
        Ok(())
    }
}

impl storage::Server for Standby {}
