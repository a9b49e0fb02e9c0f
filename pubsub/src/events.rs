//! The service's notifications (SPEC.md, PubSub): TopicAdvertReceived, TopicSubscribed and
//! TopicUnsubscribed, and the readers of this node's topics that join, leave or fall a window
//! behind. They go to every watcher that subscribed through the `events` call. Adverts are
//! seen in the identity store, where routers record the topics connected nodes announce: a new
//! or changed one is told once.

use crate::core::notice::Notice;
use netmachine_schema::identity_capnp::identity_record;
use netmachine_schema::identity_store_capnp::{identity_store, identity_watcher};
use netmachine_schema::pubsub_capnp::pub_sub_events;
use netmachine_schema::service_capnp::subscription;
use netmachine_schema::{Identity, TopicAdvert};
use netmachine_service::fanout::Fanout;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

/// Watchers at once.
pub const MAX_SUBSCRIBERS: usize = 64;

/// Who is told, and the adverts told already: (node, created) by topic, as many as the
/// identity store holds (a record deleted there is forgotten here).
pub struct Events {
    pub watchers: Rc<Fanout<pub_sub_events::Client>>,
    adverts_told: RefCell<HashMap<Identity, (Identity, u64)>>,
    /// The identity store's subscription to this service's watcher, while linked.
    store_watch: RefCell<Option<subscription::Client>>,
    node: Identity,
}

impl Events {
    pub fn new(node: Identity) -> Rc<Self> {
        Rc::new(Events {
            watchers: Fanout::new("pubsub events", MAX_SUBSCRIBERS),
            adverts_told: RefCell::new(HashMap::new()),
            store_watch: RefCell::new(None),
            node,
        })
    }

    /// Tells every watcher what the core noticed.
    pub fn notice(&self, notice: &Notice) {
        self.watchers.notify(|sink| {
            let mut request = sink.event_request();
            let mut event = request.get().init_event();
            event.set_topic(&notice.topic().0);
            match notice {
                Notice::Subscribed { node, peer, .. } => {
                    let mut subscribed = event.init_subscribed();
                    subscribed.set_node(&node.0);
                    subscribed.set_peer(&peer.0);
                }
                Notice::Unsubscribed { reason, .. } => event.set_unsubscribed(reason.as_str()),
                Notice::ReaderAdded { reader, .. } => event.set_reader_added(&reader.0),
                Notice::ReaderLeft { reader, reason, .. } => {
                    let mut left = event.init_reader_left();
                    left.set_reader(&reader.0);
                    left.set_reason(reason.as_str());
                }
                Notice::ReaderFull { reader, .. } => event.set_reader_full(&reader.0),
            }
            async move { request.send().promise.await.map(|_| ()) }
        });
    }

    /// A topic record the identity store accepted: told if another node holds the topic and it
    /// is new, or newer, or now held elsewhere.
    fn advert_stored(&self, advert: &TopicAdvert, node: Identity) {
        if node == self.node {
            return;
        }
        let seen = (node, advert.created);
        if self.adverts_told.borrow_mut().insert(advert.topic, seen) == Some(seen) {
            return;
        }
        let (topic, publisher) = (advert.topic, advert.publisher);
        self.watchers.notify(|sink| {
            let mut request = sink.event_request();
            let mut event = request.get().init_event();
            event.set_topic(&topic.0);
            let mut received = event.init_advert_received();
            received.set_node(&node.0);
            received.set_publisher(&publisher.0);
            async move { request.send().promise.await.map(|_| ()) }
        });
    }

    /// Registers the watcher of topic records with the identity store (on each link to it).
    pub async fn watch_store(self: Rc<Self>, store: identity_store::Client) -> capnp::Result<()> {
        let watcher: identity_watcher::Client = capnp_rpc::new_client(AdvertWatcher { events: Rc::downgrade(&self) });
        let mut request = store.watch_request();
        request.get().set_watcher(watcher);
        let answer = request.send().promise.await?;
        *self.store_watch.borrow_mut() = Some(answer.get()?.get_subscription()?);
        Ok(())
    }
}

/// Receives the identity store's updates and picks out topic adverts.
struct AdvertWatcher {
    events: Weak<Events>,
}

impl identity_watcher::Server for AdvertWatcher {
    async fn identity_updated(self: Rc<Self>, params: identity_watcher::IdentityUpdatedParams, _: identity_watcher::IdentityUpdatedResults) -> capnp::Result<()> {
        let params = params.get()?;
        if params.get_deleted() {
            let id = Identity::from_slice("id", params.get_id()?).map_err(|e| capnp::Error::failed(e.to_string()))?;
            if let Some(events) = self.events.upgrade() {
                events.adverts_told.borrow_mut().remove(&id);
            }
            return Ok(());
        }
        let identity_record::Topic(topic) = params.get_record()?.which()? else { return Ok(()) };
        let topic = topic?;
        let advert = TopicAdvert::read(topic.get_advert()?).map_err(|e| capnp::Error::failed(e.to_string()))?;
        // A record that names no node holding the topic says nothing to tell.
        let Ok(node) = Identity::from_slice("topic.node", topic.get_node()?) else { return Ok(()) };
        if let Some(events) = self.events.upgrade() {
            events.advert_stored(&advert, node);
        }
        Ok(())
    }
}
