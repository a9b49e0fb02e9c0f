//! The transport's view of the identity store and the router: it loads every node record into
//! the peer book on (re)connect and follows IdentityUpdated after; it stores a peer's newer
//! advert learned in a handshake; and it has the router sign this node's advert for the
//! addresses it bound.

use crate::connections::Transport;
use crate::core::advert;
use crate::core::book::PeerInfo;
use crate::core::pool::Input;
use netmachine_schema::identity_capnp::{identity_record, node_advert, RecordKind};
use netmachine_schema::identity_store_capnp::{identity_store, identity_watcher, update_result};
use netmachine_schema::router_capnp::router;
use netmachine_schema::Identity;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};

type SetUp = Pin<Box<dyn Future<Output = capnp::Result<()>>>>;

/// Stores `record` under `id`; the store's refusal becomes the error.
pub async fn store_record(store: &identity_store::Client, id: Identity, record: &capnp::message::Builder<capnp::message::HeapAllocator>) -> Result<(), String> {
    let mut request = store.update_request();
    request.get().set_id(&id.0);
    request.get().set_record(record.get_root_as_reader::<identity_record::Reader>().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let answer = request.send().promise.await.map_err(|e| e.to_string())?;
    match answer.get().and_then(|a| a.get_result()).map_err(|e| e.to_string())?.which().map_err(|e| e.to_string())? {
        update_result::Accepted(()) => Ok(()),
        update_result::Refused(refused) => Err(format!(
            "the identity store refused it ({:?}): {}",
            refused.get_reason().map_err(|e| e.to_string())?,
            refused.get_detail().ok().and_then(|d| d.to_string().ok()).unwrap_or_default()
        )),
    }
}

/// Adds a node from its advert (operator command `peer add`).
pub async fn add_peer(transport: &Transport, advert: node_advert::Reader<'_>, trust: u8, permanent: bool) -> Result<Identity, String> {
    let node = Identity::from_slice("advert.id", advert.get_id().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    advert::check(node, advert)?;
    if node == transport.node {
        return Err("that is this node's own advert".into());
    }
    let store = transport
        .identity_store
        .client_within(std::time::Duration::from_secs(5))
        .await
        .ok_or("the identity store is unreachable")?;
    let record = advert::node_record(advert, trust, permanent).map_err(|e| e.to_string())?;
    store_record(&store, node, &record).await?;
    Ok(node)
}

/// Stores a peer's advert learned in a handshake if the store knows the peer and holds an
/// older version, keeping its trust and preferences.
pub fn learn_advert(transport: &Rc<Transport>, node: Identity, advert: Vec<u8>) {
    let Some(store) = transport.identity_store.client() else { return };
    tokio::task::spawn_local(async move {
        let outcome: Result<(), String> = async {
            let message = advert::read(&advert)?;
            let advert = message.get_root::<node_advert::Reader>().map_err(|e| e.to_string())?;
            let mut lookup = store.lookup_request();
            lookup.get().set_id(&node.0);
            let answer = lookup.send().promise.await.map_err(|e| e.to_string())?;
            let answer = answer.get().map_err(|e| e.to_string())?;
            if !answer.get_found() {
                return Ok(());
            }
            let stored = answer.get_record().map_err(|e| e.to_string())?;
            let Some(record) = advert::replacement(stored, advert).map_err(|e| e.to_string())? else { return Ok(()) };
            store_record(&store, node, &record).await?;
            tracing::info!(peer = %node, version = advert.get_version(), "stored the peer's newer advert");
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            tracing::info!(peer = %node, %error, "could not store the peer's advert");
        }
    });
}

/// What the transport runs each time its link to the identity store comes up.
pub fn on_identity_store_connect(transport: Weak<Transport>) -> impl Fn(identity_store::Client) -> SetUp {
    move |store| {
        let transport = transport.clone();
        Box::pin(async move {
            let transport = transport.upgrade().ok_or_else(|| capnp::Error::failed("stopping".into()))?;
            let mut loaded = Vec::new();
            netmachine_identity_client::for_each_record(&store, RecordKind::Node, |id, record| {
                if let identity_record::Node(node) = record.which()? {
                    loaded.push((id, PeerInfo::from_record(node?)?));
                }
                Ok(())
            })
            .await?;
            transport.handle(Input::BookLoaded(loaded));
            let watcher: identity_watcher::Client = capnp_rpc::new_client(BookWatcher { transport: Rc::downgrade(&transport) });
            let mut request = store.watch_request();
            request.get().set_watcher(watcher);
            let answer = request.send().promise.await?;
            *transport.identity_watch.borrow_mut() = Some(answer.get()?.get_subscription()?);
            Ok(())
        })
    }
}

struct BookWatcher {
    transport: Weak<Transport>,
}

impl identity_watcher::Server for BookWatcher {
    async fn identity_updated(self: Rc<Self>, params: identity_watcher::IdentityUpdatedParams, _: identity_watcher::IdentityUpdatedResults) -> capnp::Result<()> {
        let Some(transport) = self.transport.upgrade() else { return Ok(()) };
        let params = params.get()?;
        let id = Identity::from_slice("id", params.get_id()?).map_err(|e| capnp::Error::failed(e.to_string()))?;
        let info = match params.get_deleted() {
            true => None,
            false => match params.get_record()?.which()? {
                identity_record::Node(node) => Some(PeerInfo::from_record(node?)?),
                _ => return Ok(()),
            },
        };
        transport.handle(Input::Book { node: id, info });
        Ok(())
    }
}

/// What the transport runs each time its link to the router comes up: have the advert signed.
pub fn on_router_connect(transport: Weak<Transport>) -> impl Fn(router::Client) -> SetUp {
    move |router| {
        let transport = transport.clone();
        Box::pin(async move {
            let transport = transport.upgrade().ok_or_else(|| capnp::Error::failed("stopping".into()))?;
            let addrs = advert::addresses_to_advertise(&transport.home.config.transport.advertise, &transport.local_addrs());
            if addrs.is_empty() {
                tracing::warn!("no address to advertise: set transport.advertise when listening on 0.0.0.0 or ::");
            }
            let mut request = router.sign_advert_request();
            advert::set_addresses(request.get().init_addrs(addrs.len() as u32), &addrs, transport.node);
            request.get().init_protocols(1).set(0, std::str::from_utf8(crate::core::tls::ALPN).unwrap_or("netmachine/1"));
            let answer = request.send().promise.await?;
            let mut message = capnp::message::Builder::new_default();
            message.set_root(answer.get()?.get_advert()?)?;
            let advert = capnp::serialize::write_message_to_words(&message);
            tracing::info!(addrs = ?addrs, "this node's advert is signed");
            transport.advert.send_replace(Some(advert));
            Ok(())
        })
    }
}
