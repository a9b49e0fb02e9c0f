//! The transport's event stream (bee-network's events, the specification's notifications): node
//! connected, connect failed, disconnected, refused, and message counts.

use netmachine_schema::transport_capnp::{transport_events, ConnectRefusal};
use netmachine_schema::Identity;
use netmachine_service::fanout::Fanout;
use std::rc::Rc;

/// Subscribers at once.
pub const MAX_SUBSCRIBERS: usize = 64;

/// Something that happened to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected,
    ConnectFailed(String),
    Disconnected(String),
    /// This node refused the peer.
    Refused(ConnectRefusal),
    Counts { frames_sent: u64, frames_received: u64 },
}

/// Sends `event` about `node` to every subscriber.
pub fn emit(subscribers: &Rc<Fanout<transport_events::Client>>, node: Identity, event: Event) {
    subscribers.notify(|sink| {
        let mut request = sink.event_request();
        let mut out = request.get().init_event();
        out.set_node(&node.0);
        match &event {
            Event::Connected => out.set_connected(()),
            Event::ConnectFailed(reason) => out.set_connect_failed(reason.as_str()),
            Event::Disconnected(reason) => out.set_disconnected(reason.as_str()),
            Event::Refused(reason) => out.set_refused(*reason),
            Event::Counts { frames_sent, frames_received } => {
                let mut counts = out.init_counts();
                counts.set_messages_sent(*frames_sent);
                counts.set_messages_received(*frames_received);
            }
        }
        async move { request.send().promise.await.map(|_| ()) }
    });
}
