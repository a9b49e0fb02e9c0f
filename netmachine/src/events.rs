//! `netmachine events`: prints the node's events, one per line, until interrupted: the
//! transport's (node connected, connect failed, disconnected, refused, message counts) and the
//! pubsub service's (topic advert received, subscribed, unsubscribed; readers of this node's
//! topics added, gone, or a window behind).

use crate::node_client::{connect, run_local};
use anyhow::Result;
use netmachine_schema::pubsub_capnp::{pub_sub, pub_sub_event, pub_sub_events};
use netmachine_schema::transport_capnp::{transport, transport_event, transport_events};
use netmachine_schema::Identity;
use netmachine_service::{NodeHome, ServiceKind};
use serde_json::{json, Value};
use std::path::Path;
use std::rc::Rc;

struct Printer {
    json: bool,
}

fn id(bytes: capnp::Result<&[u8]>) -> String {
    bytes.ok().and_then(|b| Identity::from_slice("id", b).ok()).map(|i| i.to_string()).unwrap_or_default()
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.ok().and_then(|t| t.to_string().ok()).unwrap_or_default()
}

impl Printer {
    /// One event: `kind`, what it is about (`subject`, named `subject_name` in JSON), and detail.
    fn print(&self, kind: &str, subject_name: &str, subject: &str, detail: Value) {
        if self.json {
            let mut line = json!({"event": kind, "detail": detail});
            line[subject_name] = json!(subject);
            println!("{line}");
        } else if detail.is_null() {
            println!("{kind} {subject}");
        } else {
            println!("{kind} {subject} {}", detail.as_str().map(str::to_string).unwrap_or_else(|| detail.to_string()));
        }
    }
}

impl transport_events::Server for Printer {
    async fn event(self: Rc<Self>, params: transport_events::EventParams, _: transport_events::EventResults) -> capnp::Result<()> {
        let event = params.get()?.get_event()?;
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
        self.print(kind, "node", &id(event.get_node()), detail);
        Ok(())
    }
}

impl pub_sub_events::Server for Printer {
    async fn event(self: Rc<Self>, params: pub_sub_events::EventParams, _: pub_sub_events::EventResults) -> capnp::Result<()> {
        let event = params.get()?.get_event()?;
        let (kind, detail) = match event.which()? {
            pub_sub_event::AdvertReceived(advert) => {
                ("topic_advert_received", json!({"node": id(advert.get_node()), "publisher": id(advert.get_publisher())}))
            }
            pub_sub_event::Subscribed(subscribed) => {
                ("topic_subscribed", json!({"node": id(subscribed.get_node()), "peer": id(subscribed.get_peer())}))
            }
            pub_sub_event::Unsubscribed(reason) => ("topic_unsubscribed", json!(text(reason))),
            pub_sub_event::ReaderAdded(reader) => ("topic_reader_added", json!({"reader": id(reader)})),
            pub_sub_event::ReaderLeft(left) => ("topic_reader_left", json!({"reader": id(left.get_reader()), "reason": text(left.get_reason())})),
            pub_sub_event::ReaderFull(reader) => ("topic_reader_full", json!({"reader": id(reader)})),
        };
        self.print(kind, "topic", &id(event.get_topic()), detail);
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
        let _transport_subscription = answer.get()?.get_subscription()?;
        // A node may run without its pubsub service: its transport events still print.
        let _pubsub_subscription = match connect::<pub_sub::Client>(&home, ServiceKind::PubSub).await {
            Ok(pubsub) => {
                let mut request = pubsub.events_request();
                request.get().set_sink(capnp_rpc::new_client::<pub_sub_events::Client, _>(Printer { json: json_output }));
                let answer = request.send().promise.await?;
                Some(answer.get()?.get_subscription()?)
            }
            Err(error) => {
                eprintln!("netmachine: no pubsub events: {}", crate::one_sentence(&error));
                None
            }
        };
        eprintln!("netmachine: listening for transport and pubsub events; Ctrl-C stops");
        netmachine_service::process::stop_requested().await;
        Ok(())
    })
}
