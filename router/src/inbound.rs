//! Frames from other nodes, as transport hands them over: opened and checked (`core::frame`),
//! engine signatures verified off the event loop, then given to the core in arrival order per
//! node. What other nodes announce about their engines, once the core has checked it, is
//! recorded in the identity store so that lookups find it later.

use crate::core::{frame, Announcement, FrameRefused, Input};
use crate::shell::RouterState;
use netmachine_schema::identity_capnp::{identity_record, RecordKind};
use netmachine_schema::identity_store_capnp::{identity_store, update_result};
use netmachine_schema::Identity;
use std::rc::Rc;
use std::time::Duration;

impl RouterState {
    /// Takes one frame from node `src`; returns once each of its messages is queued or dropped.
    pub async fn receive_frame(self: &Rc<Self>, src: Identity, bytes: &[u8], public: bool) -> Result<(), FrameRefused> {
        let order = self.arrival_order(src);
        let in_order = order.lock().await;
        let opened = frame::open(self.key.identity(), src, bytes, self.home.config.rpc_word_limit())?;
        let require = self.home.config.router.require_engine_signatures;
        let messages = opened.messages.len() as u64;
        let checked = match opened.has_signatures_to_check(require) {
            true => tokio::task::spawn_blocking(move || frame::verify_signatures(opened, require)).await,
            false => Ok(opened),
        };
        let opened = match checked {
            Ok(opened) => opened,
            Err(error) => {
                // The check itself failed: none of the frame's messages can be trusted.
                tracing::error!(peer = %src, %error, messages, "could not check a frame's engine signatures; its messages are dropped");
                self.count(crate::core::DropReason::BadSignature, messages);
                return Ok(());
            }
        };
        if opened.unsigned > 0 {
            tracing::info!(peer = %src, count = opened.unsigned, "dropped unsigned messages (router.require_engine_signatures)");
        }
        let (ticket, settled) = self.ticket();
        self.feed(Input::Frame { ticket, src, public, frame: opened });
        drop(in_order);
        let _ = settled.outcome().await;
        Ok(())
    }

    /// A lock per sending node, so its frames reach the core in the order they arrived.
    fn arrival_order(&self, src: Identity) -> Rc<tokio::sync::Mutex<()>> {
        let mut orders = self.arrival_orders.borrow_mut();
        orders.retain(|_, lock| Rc::strong_count(lock) > 1);
        orders.entry(src).or_insert_with(|| Rc::new(tokio::sync::Mutex::new(()))).clone()
    }

    /// Records another node's engines in the identity store, so lookups route to that node:
    /// the locations the core accepted, and the removal of those that left it; and the adverts
    /// of the topics created there, so the pubsub service finds them.
    pub(crate) async fn record_announcement(self: Rc<Self>, node: Identity, announcement: Announcement) {
        let _in_order = self.records_in_order.lock().await;
        let Some(store) = self.identity_store.client_within(Duration::from_secs(5)).await else {
            return tracing::warn!(peer = %node, "cannot record announced engines: the identity store is unreachable");
        };
        let outcome: capnp::Result<()> = async {
            // Only records of this node's engines are removed: a node cannot delete another's.
            let recorded = match announcement.full || !announcement.detached.is_empty() {
                true => engines_recorded_for(&store, node).await?,
                false => Vec::new(),
            };
            let stale = recorded.into_iter().filter(|engine| {
                announcement.detached.contains(engine) || (announcement.full && !announcement.attached.iter().any(|l| l.engine == *engine))
            });
            for engine in stale {
                let mut request = store.delete_request();
                request.get().set_id(&engine.0);
                request.send().promise.await?;
            }
            for location in announcement.attached {
                let mut record = capnp::message::Builder::new_default();
                location.write(record.init_root::<identity_record::Builder>().init_engine());
                if let Some(refused) = update(&store, location.engine, &record).await? {
                    // A later location may have been stored meanwhile (the engine moved again).
                    tracing::info!(peer = %node, engine = %location.engine, %refused, "the identity store kept its record of an announced engine");
                }
            }
            for advert in announcement.topics {
                let mut record = capnp::message::Builder::new_default();
                let mut topic = record.init_root::<identity_record::Builder>().init_topic();
                topic.set_id(&advert.topic.0);
                topic.set_node(&node.0);
                advert.write(topic.init_advert());
                if let Some(refused) = update(&store, advert.topic, &record).await? {
                    // An advert of the topic created later is kept.
                    tracing::info!(peer = %node, topic = %advert.topic, %refused, "the identity store kept its record of an announced topic");
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            tracing::warn!(peer = %node, %error, "could not record announced engines");
        }
    }
}

/// Stores `record` under `id`: the store's refusal (reason and detail), if it kept what it had.
async fn update(store: &identity_store::Client, id: Identity, record: &capnp::message::Builder<capnp::message::HeapAllocator>) -> capnp::Result<Option<String>> {
    let mut request = store.update_request();
    request.get().set_id(&id.0);
    request.get().set_record(record.get_root_as_reader::<identity_record::Reader>()?)?;
    let answer = request.send().promise.await?;
    match answer.get()?.get_result()?.which()? {
        update_result::Refused(refused) => Ok(Some(format!("{:?}: {}", refused.get_reason(), refused.get_detail()?.to_string().unwrap_or_default()))),
        _ => Ok(None),
    }
}

async fn engines_recorded_for(store: &identity_store::Client, node: Identity) -> capnp::Result<Vec<Identity>> {
    let mut found = Vec::new();
    netmachine_identity_client::for_each_record(store, RecordKind::Engine, |id, record| {
        if let identity_record::Engine(engine) = record.which()? {
            if engine?.get_node()? == node.0 {
                found.push(id);
            }
        }
        Ok(())
    })
    .await?;
    Ok(found)
}
