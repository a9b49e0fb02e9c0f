//! `netmachine-transport`: the node's QUIC/TLS connections to other nodes. It holds the node
//! key too, because TLS signs every handshake with the certificate's key (see the README).

use netmachine_schema::transport_capnp::transport;
use netmachine_service::{process, Link, ServiceKind};
use netmachine_transport::connections::Transport;
use netmachine_transport::server::TransportServer;
use netmachine_transport::{peer_sync, tls::NodeTls};

fn main() -> std::process::ExitCode {
    process::run(ServiceKind::Transport, "netmachine transport: QUIC/TLS connections to other nodes", |context| async move {
        let key = context.home.node_key()?;
        let tls = NodeTls::new(&key)?;
        let words = context.home.config.rpc_word_limit();
        let router_socket = context.home.socket(ServiceKind::Router);
        let store_socket = context.home.socket(ServiceKind::IdentityStore);
        let storage = Link::start(ServiceKind::Storage, context.home.socket(ServiceKind::Storage), words, |_| async { Ok(()) });
        let transport = Transport::bind(
            context.home,
            tls,
            key.identity(),
            context.stats,
            |weak| Link::start(ServiceKind::Router, router_socket, words, peer_sync::on_router_connect(weak)),
            |weak| Link::start(ServiceKind::IdentityStore, store_socket, words, peer_sync::on_identity_store_connect(weak)),
            storage,
        )?;
        let bulk = netmachine_service::bulk::bind(&transport.home, ServiceKind::Transport).await?;
        transport.start();
        tokio::task::spawn_local(transport.clone().serve_bulk(bulk));
        tracing::info!(addrs = ?transport.local_addrs(), "QUIC endpoint bound");
        tokio::task::spawn_local(transport.clone().report_counts());
        let client: transport::Client = capnp_rpc::new_client(TransportServer(transport.clone()));
        Ok(process::Running::stopping_with(client.client, async move { transport.shut_down().await }))
    })
}
