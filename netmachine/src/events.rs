//! `netmachine events`: prints transport's events (node connected, connect failed,
//! disconnected, refused, message counts), one per line, until interrupted.

use crate::node_client::{connect, run_local};
use anyhow::Result;
use netmachine_schema::transport_capnp::{transport, transport_event, transport_events};
use netmachine_schema::Identity;
use netmachine_service::{NodeHome, ServiceKind};
use serde_json::json;
use std::path::Path;
use std::rc::Rc;

struct Printer {
    json: bool,
}

impl transport_events::Server for Printer {
    async fn event(self: Rc<Self>, params: transport_events::EventParams, _: transport_events::EventResults) -> capnp::Result<()> {
        let event = params.get()?.get_event()?;
        let node = Identity::from_slice("node", event.get_node()?).map(|n| n.to_string()).unwrap_or_default();
        let text = |t: capnp::Result<capnp::text::Reader<'_>>| t.ok().and_then(|t| t.to_string().ok()).unwrap_or_default();
        let (kind, detail) = match event.which()? {
            transport_event::Connected(()) => ("connected", json!(null)),
            transport_event::ConnectFailed(reason) => ("connect_failed", json!(text(reason))),
            transport_event::Disconnected(reason) => ("disconnected", json!(text(reason))),
            transport_event::Refused(reason) => ("refused", json!(format!("{:?}", reason?))),
            transport_event::Counts(counts) => (
                "counts",
                json!({"sent": counts.get_messages_sent(), "received": counts.get_messages_received()}),
            ),
        };
        if self.json {
            println!("{}", json!({"event": kind, "node": node, "detail": detail}));
        } else if detail.is_null() {
            println!("{kind} {node}");
        } else {
            println!("{kind} {node} {}", detail.as_str().map(str::to_string).unwrap_or_else(|| detail.to_string()));
        }
        Ok(())
    }
}

pub fn run(root: &Path, set: &[String], json_output: bool) -> Result<()> {
    let home = NodeHome::load(root, set)?;
    run_local(async {
        let transport: transport::Client = connect(&home, ServiceKind::Transport).await?;
        let mut request = transport.events_request();
        request.get().set_sink(capnp_rpc::new_client::<transport_events::Client, _>(Printer { json: json_output }));
        let answer = request.send().promise.await?;
        let _subscription = answer.get()?.get_subscription()?;
        eprintln!("netmachine: listening for transport events; Ctrl-C stops");
        netmachine_service::process::stop_requested().await;
        Ok(())
    })
}
