//! Frames from other nodes, as transport hands them over: checked (the frame is from the node
//! TLS authenticated, for this node, and signed by it; engine signatures verified as a batch),
//! then each message is delivered to its local engine. Frames from one node are processed in
//! arrival order. A frame that fails verification is refused and its sender disconnected.

use crate::attachment::enqueue;
use crate::drops::DropReason;
use crate::remote::Announcement;
use crate::server::RouterState;
use netmachine_schema::identity_capnp::{identity_record, RecordKind};
use netmachine_schema::message_capnp::{p2_p_batch, p2_p_frame, p2_p_payload};
use netmachine_schema::time::now_ms;
use netmachine_schema::{signing, Destination, EngineMessage, Identity};
use std::rc::Rc;
use std::time::Duration;

/// Why a frame was refused.
pub struct FrameRefused {
    pub reason: DropReason,
    pub detail: String,
    /// Whether the sending node should be disconnected.
    pub disconnect: bool,
}

fn refused(reason: DropReason, detail: impl Into<String>, disconnect: bool) -> FrameRefused {
    FrameRefused { reason, detail: detail.into(), disconnect }
}

impl RouterState {
    /// Takes one frame from node `src`.
    pub async fn receive_frame(self: &Rc<Self>, src: Identity, frame: &[u8], public: bool) -> Result<(), FrameRefused> {
        let order = self.arrival_order(src);
        let _in_order = order.lock().await;
        let options = netmachine_service::rpc::reader_options(self.home.config.rpc_word_limit());
        let message = capnp::serialize::read_message(&mut &frame[..], options)
            .map_err(|e| refused(DropReason::Malformed, format!("unreadable frame: {e}"), true))?;
        let batch = self.verify_frame(src, &message)?;
        let batch = capnp::serialize::read_message(&mut &batch[..], options)
            .map_err(|e| refused(DropReason::Malformed, format!("unreadable batch: {e}"), true))?;
        let payloads = batch
            .get_root::<p2_p_batch::Reader>()
            .and_then(|b| b.get_payloads())
            .map_err(|e| refused(DropReason::Malformed, format!("unreadable batch: {e}"), true))?;
        let mut messages = Vec::with_capacity(payloads.len() as usize);
        for payload in payloads.iter() {
            match payload.which() {
                Ok(p2_p_payload::Engine(Ok(engine))) => match EngineMessage::read(engine) {
                    Ok(message) => messages.push(message),
                    Err(error) => {
                        self.drops.count(DropReason::Malformed, 1);
                        tracing::info!(peer = %src, %error, "dropped an unreadable message");
                    }
                },
                Ok(p2_p_payload::Engines(Ok(engines))) => {
                    let read = |list: capnp::Result<capnp::data_list::Reader<'_>>| -> Vec<Identity> {
                        list.map(|l| l.iter().filter_map(|id| id.ok().and_then(|id| Identity::from_slice("engine", id).ok())).collect())
                            .unwrap_or_default()
                    };
                    let announcement = Announcement {
                        full: engines.get_full(),
                        attached: read(engines.get_attached()),
                        detached: read(engines.get_detached()),
                    };
                    // The table learns now, in arrival order, so a reply sent right after
                    // finds its way; the identity store records it for later lookups.
                    {
                        let mut table = self.table.borrow_mut();
                        for engine in &announcement.attached {
                            table.learn_engine(*engine, src);
                        }
                        for engine in &announcement.detached {
                            table.forget_engine(*engine, src);
                        }
                    }
                    tokio::task::spawn_local(self.clone().learn_engines(src, announcement));
                }
                _ => {
                    self.drops.count(DropReason::Malformed, 1);
                    tracing::info!(peer = %src, "dropped a payload of a kind this node does not take");
                }
            }
        }
        let messages = self.check_engine_signatures(src, messages).await;
        self.remote_received.set(self.remote_received.get() + messages.len() as u64);
        for message in messages {
            if let Err((reason, detail)) = self.deliver_remote(message, public).await {
                self.drops.count(reason, 1);
                tracing::debug!(peer = %src, ?reason, %detail, "dropped a message from another node");
            }
        }
        Ok(())
    }

    /// A lock per sending node, so its frames are processed in the order they arrived.
    fn arrival_order(&self, src: Identity) -> Rc<tokio::sync::Mutex<()>> {
        let mut orders = self.arrival_orders.borrow_mut();
        orders.retain(|_, lock| Rc::strong_count(lock) > 1);
        orders.entry(src).or_insert_with(|| Rc::new(tokio::sync::Mutex::new(()))).clone()
    }

    /// The frame's batch bytes, once the frame is shown to be `src`'s, for this node, signed.
    fn verify_frame(&self, src: Identity, message: &capnp::message::Reader<capnp::serialize::OwnedSegments>) -> Result<Vec<u8>, FrameRefused> {
        let malformed = |e: capnp::Error| refused(DropReason::Malformed, format!("unreadable frame: {e}"), true);
        let frame = message.get_root::<p2_p_frame::Reader>().map_err(malformed)?;
        let claimed = Identity::from_slice("src", frame.get_src().map_err(malformed)?)
            .map_err(|e| refused(DropReason::Malformed, e.to_string(), true))?;
        if claimed != src {
            return Err(refused(DropReason::BadSignature, format!("a frame claiming to be from {claimed} came from node {src}"), true));
        }
        let dst = Identity::from_slice("dst", frame.get_dst().map_err(malformed)?)
            .map_err(|e| refused(DropReason::Malformed, e.to_string(), true))?;
        if dst != self.key.identity() {
            return Err(refused(DropReason::NoRoute, format!("a frame for node {dst} arrived here"), false));
        }
        let batch = frame.get_batch().map_err(malformed)?;
        let sig = frame.get_sig().map_err(malformed)?;
        src.verify(&signing::p2p_frame(&src, &dst, batch), sig)
            .map_err(|e| refused(DropReason::BadSignature, format!("frame signature by {src}: {e}"), true))?;
        Ok(batch.to_vec())
    }

    /// Keeps the messages whose engine signature verifies (and unsigned ones, unless the node
    /// requires signatures). Signatures are checked as one batch, off the event loop; if the
    /// batch fails, one by one to find the forgeries.
    async fn check_engine_signatures(&self, src: Identity, messages: Vec<EngineMessage>) -> Vec<EngineMessage> {
        let require = self.home.config.router.require_engine_signatures;
        if !require && messages.iter().all(|m| m.sig.is_none()) {
            return messages;
        }
        let total = messages.len() as u64;
        let verified = tokio::task::spawn_blocking(move || crate::signatures::verify_all(messages, require)).await;
        let verified = match verified {
            Ok(verified) => verified,
            Err(error) => {
                self.drops.count(DropReason::BadSignature, total);
                tracing::error!(peer = %src, %error, count = total, "dropped messages whose signatures could not be checked");
                return Vec::new();
            }
        };
        if verified.unsigned > 0 {
            self.drops.count(DropReason::BadSignature, verified.unsigned);
            tracing::info!(peer = %src, count = verified.unsigned, "dropped unsigned messages (router.require_engine_signatures)");
        }
        if verified.forged > 0 {
            self.drops.count(DropReason::BadSignature, verified.forged);
            tracing::warn!(peer = %src, bad = verified.forged, "dropped messages with bad engine signatures");
        }
        verified.kept
    }

    async fn deliver_remote(self: &Rc<Self>, message: EngineMessage, public: bool) -> Result<(), (DropReason, String)> {
        if message.is_expired(now_ms()) {
            return Err((DropReason::Expired, "expired on arrival".into()));
        }
        let max = self.home.config.limits.max_message_bytes as usize;
        if message.body.len() > max {
            return Err((DropReason::OverLimit, format!("a {}-byte body is over this node's limit of {max}", message.body.len())));
        }
        let engine = match message.dst {
            Destination::Engine(engine) => engine,
            Destination::Node(node) if node == self.key.identity() => return self.answer_node_message(message).await,
            _ => return Err((DropReason::NoRoute, "a message for another node or a topic arrived here".into())),
        };
        let queue = {
            let table = self.table.borrow();
            match table.attachment(&engine) {
                Some(attachment) if public && !attachment.public => {
                    return Err((DropReason::NoRoute, format!("engine {engine} takes no messages from the public network")));
                }
                Some(attachment) => attachment.queue(),
                None => return Err((DropReason::NoRoute, format!("engine {engine} is not attached here"))),
            }
        };
        enqueue(queue, message, Duration::from_millis(self.home.config.limits.send_wait_ms)).await
    }

    /// Records another node's engines in the identity store, so lookups route to that node.
    async fn learn_engines(self: Rc<Self>, node: Identity, announcement: Announcement) {
        let Some(store) = self.identity_store.client_within(Duration::from_secs(5)).await else {
            return tracing::warn!(peer = %node, "cannot record announced engines: the identity store is unreachable");
        };
        let outcome: capnp::Result<()> = async {
            // Only records of this node's engines are removed: a node cannot delete another's.
            let recorded = match announcement.full || !announcement.detached.is_empty() {
                true => self.engines_recorded_for(&store, node).await?,
                false => Vec::new(),
            };
            let stale = recorded.into_iter().filter(|engine| {
                announcement.detached.contains(engine) || (announcement.full && !announcement.attached.contains(engine))
            });
            for engine in stale {
                let mut request = store.delete_request();
                request.get().set_id(&engine.0);
                request.send().promise.await?;
            }
            for engine in announcement.attached {
                if self.table.borrow().attachment(&engine).is_some() {
                    continue;
                }
                let mut record = capnp::message::Builder::new_default();
                let mut entry = record.init_root::<identity_record::Builder>().init_engine();
                entry.set_id(&engine.0);
                entry.set_node(&node.0);
                let mut request = store.update_request();
                request.get().set_id(&engine.0);
                request.get().set_record(record.get_root_as_reader::<identity_record::Reader>()?)?;
                request.send().promise.await?;
            }
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            tracing::warn!(peer = %node, %error, "could not record announced engines");
        }
    }

    async fn engines_recorded_for(&self, store: &netmachine_schema::identity_store_capnp::identity_store::Client, node: Identity) -> capnp::Result<Vec<Identity>> {
        let mut found = Vec::new();
        netmachine_identity_store::client::for_each_record(store, RecordKind::Engine, |id, record| {
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
}
