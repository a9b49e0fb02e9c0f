//! The transport's RPC face: the router's sendFrame, the operator's connect, disconnect,
//! connected nodes, add and remove peer, the event stream, this node's advert, and bulk
//! streams to other nodes (for the storage service).

use crate::connections::{NotQueued, Transport};
use crate::peer_sync;
use netmachine_schema::service_capnp::service;
use netmachine_schema::transport_capnp::transport;
use netmachine_schema::Identity;
use netmachine_service::status::StatusReport;
use netmachine_service::ServiceKind;
use std::rc::Rc;

/// The Transport interface over a running transport.
pub struct TransportServer(pub Rc<Transport>);

fn identity(field: &'static str, bytes: &[u8]) -> capnp::Result<Identity> {
    Identity::from_slice(field, bytes).map_err(|e| capnp::Error::failed(e.to_string()))
}

impl service::Server for TransportServer {
    async fn status(self: Rc<Self>, _: service::StatusParams, mut results: service::StatusResults) -> capnp::Result<()> {
        let t = &self.0;
        let (c, pool) = (&t.counters, t.pool_counters());
        let mut gauges = vec![
            ("nodes_connected", t.connected_count() as u64),
            ("frames_queued", t.queued() as u64),
            ("event_subscribers", t.events.len() as u64),
            ("udp_receive_buffer_bytes", t.sockets.iter().map(|s| s.receive as u64).min().unwrap_or(0)),
        ];
        gauges.extend(t.stats.gauges());
        let mut counters = vec![
            ("frames_sent", c.frames_sent.get()),
            ("frames_received", c.frames_received.get()),
            ("frames_expired", pool.frames_expired),
            ("frames_refused", c.frames_refused.get()),
            ("frames_over_limit", c.frames_over_limit.get()),
            ("frames_held_for_book", c.frames_held_for_book.get()),
            ("frames_stalled", c.frames_stalled.get()),
            ("frames_unreachable", pool.frames_unreachable),
            ("connections_replaced", c.connections_replaced.get()),
            ("connections_refused", c.connections_refused.get()),
            ("connect_failures", c.connect_failures.get()),
            ("streams_opened", c.streams_opened.get()),
            ("streams_served", c.streams_served.get()),
            ("streams_refused", c.streams_refused.get()),
            ("udp_receive_drops", t.sockets.iter().filter_map(|s| s.receive_drops()).sum()),
        ];
        counters.extend(t.stats.counters());
        let note = format!("QUIC on {:?}", t.local_addrs());
        StatusReport {
            kind: ServiceKind::Transport,
            node: Some(t.node),
            note: &note,
            links: vec![t.router.state(), t.identity_store.state(), t.storage.state()],
            counters,
            gauges,
            labelled: t.peer_queues(),
            engines: vec![],
        }
        .write(results.get().init_status());
        Ok(())
    }
}

impl transport::Server for TransportServer {
    async fn send_frame(self: Rc<Self>, params: transport::SendFrameParams, mut results: transport::SendFrameResults) -> capnp::Result<()> {
        let params = params.get()?;
        let dst = identity("dst", params.get_dst()?)?;
        let outcome = self.0.send_frame(dst, params.get_frame()?.to_vec(), params.get_expiry()).await;
        let mut out = results.get().init_outcome();
        match outcome {
            Ok(()) => out.set_queued(()),
            Err(NotQueued::Refused(reason)) => out.set_refused(reason.as_str()),
            // An error, not a refusal: the router keeps the frame and tries again.
            Err(NotQueued::NotReady(reason)) => return Err(capnp::Error::overloaded(reason)),
        }
        Ok(())
    }

    async fn connect(self: Rc<Self>, params: transport::ConnectParams, _: transport::ConnectResults) -> capnp::Result<()> {
        let node = identity("node", params.get()?.get_node()?)?;
        self.0.connect(node).await.map_err(capnp::Error::failed)
    }

    async fn disconnect(self: Rc<Self>, params: transport::DisconnectParams, _: transport::DisconnectResults) -> capnp::Result<()> {
        let params = params.get()?;
        let node = identity("node", params.get_node()?)?;
        let reason = params.get_reason()?.to_string().unwrap_or_default();
        tracing::warn!(peer = %node, %reason, "disconnecting on request");
        self.0.disconnect(&node, &reason);
        Ok(())
    }

    async fn connected_nodes(self: Rc<Self>, _: transport::ConnectedNodesParams, mut results: transport::ConnectedNodesResults) -> capnp::Result<()> {
        let peers: Vec<_> = self.0.peers.borrow().values().filter_map(|p| self.0.connection(&p.id).map(|c| (p.clone(), c))).collect();
        let mut list = results.get().init_nodes(peers.len() as u32);
        for (i, (peer, connection)) in peers.iter().enumerate() {
            let mut entry = list.reborrow().get(i as u32);
            entry.set_node(&peer.id.0);
            entry.set_address(connection.connection.remote_address().to_string().as_str());
            entry.set_public(connection.admission == crate::core::Admission::Public);
            entry.set_rtt_micros(connection.connection.rtt().as_micros() as u64);
            entry.set_frames_sent(peer.frames_sent.get());
            entry.set_frames_received(peer.frames_received.get());
        }
        Ok(())
    }

    async fn add_peer(self: Rc<Self>, params: transport::AddPeerParams, _: transport::AddPeerResults) -> capnp::Result<()> {
        let params = params.get()?;
        let node = peer_sync::add_peer(&self.0, params.get_advert()?, params.get_trust(), params.get_permanent())
            .await
            .map_err(capnp::Error::failed)?;
        tracing::info!(peer = %node, "peer added");
        Ok(())
    }

    async fn remove_peer(self: Rc<Self>, params: transport::RemovePeerParams, _: transport::RemovePeerResults) -> capnp::Result<()> {
        let node = identity("node", params.get()?.get_node()?)?;
        let store = self
            .0
            .identity_store
            .client_within(std::time::Duration::from_secs(5))
            .await
            .ok_or_else(|| capnp::Error::failed("the identity store is unreachable".into()))?;
        let mut request = store.delete_request();
        request.get().set_id(&node.0);
        request.send().promise.await?;
        self.0.disconnect(&node, "peer removed");
        Ok(())
    }

    async fn events(self: Rc<Self>, params: transport::EventsParams, mut results: transport::EventsResults) -> capnp::Result<()> {
        let subscription = self.0.events.subscribe(params.get()?.get_sink()?)?;
        results.get().set_subscription(subscription);
        Ok(())
    }

    async fn advert(self: Rc<Self>, _: transport::AdvertParams, mut results: transport::AdvertResults) -> capnp::Result<()> {
        let advert = self.0.own_advert().await.ok_or_else(|| {
            capnp::Error::failed("this node has no signed advert yet: the router has not answered within 5 s".into())
        })?;
        let message = capnp::serialize::read_message(&mut &advert[..], netmachine_service::rpc::reader_options(64 << 10))?;
        results.get().set_advert(message.get_root()?)?;
        Ok(())
    }
}
