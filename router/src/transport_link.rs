//! The router's side of transport's event stream: which nodes are connected, told to the core,
//! which announces this node's engines to each node as it connects.

use crate::core::Input;
use crate::shell::RouterState;
use netmachine_schema::transport_capnp::{transport, transport_event, transport_events};
use netmachine_schema::Identity;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};

struct EventSink {
    state: Weak<RouterState>,
}

impl transport_events::Server for EventSink {
    async fn event(self: Rc<Self>, params: transport_events::EventParams, _: transport_events::EventResults) -> capnp::Result<()> {
        let Some(state) = self.state.upgrade() else { return Ok(()) };
        let event = params.get()?.get_event()?;
        let node = Identity::from_slice("node", event.get_node()?).map_err(|e| capnp::Error::failed(e.to_string()))?;
        match event.which()? {
            transport_event::Connected(()) => state.feed(Input::Connected(node)),
            transport_event::Disconnected(_) => state.feed(Input::Disconnected(node)),
            _ => {}
        }
        Ok(())
    }
}

/// What the router runs each time its link to transport comes up: subscribe to its events and
/// learn which nodes are connected now.
pub fn on_transport_connect(state: Weak<RouterState>) -> impl Fn(transport::Client) -> Pin<Box<dyn Future<Output = capnp::Result<()>>>> {
    move |transport| {
        let state = state.clone();
        Box::pin(async move {
            let sink: transport_events::Client = capnp_rpc::new_client(EventSink { state: state.clone() });
            let mut request = transport.events_request();
            request.get().set_sink(sink);
            let answer = request.send().promise.await?;
            let subscription = answer.get()?.get_subscription()?;
            let connected = transport.connected_nodes_request().send().promise.await?;
            let Some(state) = state.upgrade() else { return Ok(()) };
            *state.transport_events.borrow_mut() = Some(subscription);
            let nodes = connected.get()?.get_nodes()?.iter().filter_map(|entry| Identity::from_slice("node", entry.get_node().ok()?).ok());
            state.feed(Input::TransportLinked(nodes.collect()));
            Ok(())
        })
    }
}
