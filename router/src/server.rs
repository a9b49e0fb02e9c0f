//! The router's RPC face: engines attach (challenge, then proof of key and a signed location),
//! send through their session, and receive through the Inbox they handed over; transport hands
//! over frames from other nodes. Every message goes to the core through the shell.

use tracing::Instrument;
use crate::attachment::Sink;
use crate::core::{Challenge, Refused, TopicRefused};
use crate::shell::RouterState;
use netmachine_schema::router_capnp::{attachment, engine_session, router, topic_result, TopicPolicy, TopicRefusal};
use netmachine_schema::service_capnp::service;
use netmachine_schema::{Destination, EngineLocation, EngineMessage, Identity, MessageError, TopicAdvert};
use netmachine_service::engine_access::{is_node_user, Peer};
use netmachine_service::home::ServiceKind;
use netmachine_service::status::StatusReport;
use std::cell::RefCell;
use std::rc::Rc;

impl RouterState {
    /// Whether engines of users other than the node's may attach (its socket is then open to
    /// them, and each connection's user checked).
    pub fn open_to_other_users(&self) -> bool {
        self.engine_access.open_to_others()
    }

    /// The router's bootstrap interface, for a connection from `peer`.
    pub fn client(self: &Rc<Self>, peer: Peer) -> router::Client {
        capnp_rpc::new_client(RouterServer { state: self.clone(), peer })
    }
}

/// The router, as one connection's peer sees it: engines of the users `router.engine_users`
/// and `router.engine_groups` name may attach and read the status; what the node's own
/// services call (frames from other nodes, signing adverts) is for the node's user alone.
struct RouterServer {
    state: Rc<RouterState>,
    peer: Peer,
}

impl RouterServer {
    fn admitted(&self) -> capnp::Result<()> {
        self.state.engine_access.admits(&self.peer).map_err(|refused| {
            tracing::warn!(uid = self.peer.uid, pid = self.peer.pid, %refused, "refused a connection's user");
            capnp::Error::failed(refused)
        })
    }

    fn node_user_only(&self, what: &str) -> capnp::Result<()> {
        match is_node_user(&self.peer) {
            true => Ok(()),
            false => Err(capnp::Error::failed(format!("{what} is for the node's own services; user {} may only attach engines", self.peer.uid))),
        }
    }
}

impl service::Server for RouterServer {
    async fn status(self: Rc<Self>, _: service::StatusParams, mut results: service::StatusResults) -> capnp::Result<()> {
        self.admitted()?;
        let state = &self.state;
        state.report_lanes();
        let core = state.core();
        let engines = core.attached();
        let mut counters = core.counters();
        counters.push(("attach_refused", state.attach_refused.get()));
        counters.push(("delivery_log_failures", state.delivery_log_failures.get()));
        let mut gauges = core.gauges();
        gauges.push(("delivery_logged", u64::from(state.delivery_logged())));
        gauges.extend(state.stats.gauges());
        if let Some(rings) = &state.rings {
            let (on_rings, forwarded, events_forwarded, handed_over) = rings.counters();
            let (channels, channel_messages, channel_drops) = rings.channel_counters();
            gauges.push(("engines_on_rings", on_rings));
            gauges.push(("direct_channels", channels));
            counters.extend([
                ("channel_messages", channel_messages),
                ("channel_messages_dropped", channel_drops),
                ("ring_messages_forwarded", forwarded),
                ("ring_topic_events_forwarded", events_forwarded),
                ("ring_messages_handed_over", handed_over),
                ("ring_refusals_lost", state.refusals_lost.get()),
                ("ring_handoffs_refused", rings.handoffs_refused()),
            ]);
        }
        counters.extend(state.stats.counters());
        StatusReport {
            kind: ServiceKind::Router,
            node: Some(state.key.identity()),
            note: "",
            links: vec![state.identity_store.state(), state.transport.state()],
            counters,
            gauges,
            labelled: labelled(core.engine_queues(), "engine_queue_depth", "engine")
                .chain(labelled(core.peer_unacked_bytes(), "peer_unacked_bytes", "node"))
                .collect(),
            engines,
        }
        .write(results.get().init_status());
        Ok(())
    }
}

/// `values` as gauges named `name`, each labelled `label` = its identity.
fn labelled(
    values: Vec<(Identity, u64)>,
    name: &'static str,
    label: &'static str,
) -> impl Iterator<Item = netmachine_service::status::Labelled> {
    values.into_iter().map(move |(id, value)| (name, label, id.to_string(), value))
}

impl router::Server for RouterServer {
    async fn attach(self: Rc<Self>, params: router::AttachParams, mut results: router::AttachResults) -> capnp::Result<()> {
        self.admitted().inspect_err(|_| self.state.attach_refused.set(self.state.attach_refused.get() + 1))?;
        let engine = Identity::from_slice("engine", params.get()?.get_engine()?)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| capnp::Error::failed(format!("no randomness: {e}")))?;
        let challenge = Challenge::new(self.state.key.identity(), engine, nonce);
        let mut out = results.get();
        out.set_challenge(challenge.nonce());
        out.set_node(&self.state.key.identity().0);
        out.set_attachment(capnp_rpc::new_client(Attaching { state: self.state.clone(), challenge: RefCell::new(challenge) }));
        Ok(())
    }

    async fn receive_frame(self: Rc<Self>, params: router::ReceiveFrameParams, _: router::ReceiveFrameResults) -> capnp::Result<()> {
        self.node_user_only("handing over frames")?;
        let params = params.get()?;
        let src = Identity::from_slice("src", params.get_src()?).map_err(|e| capnp::Error::failed(e.to_string()))?;
        let state = &self.state;
        let frame = params.get_frame()?;
        let span = tracing::debug_span!("frame", peer = %src.short(), bytes = frame.len());
        match state.receive_frame(src, frame, params.get_public()).instrument(span).await {
            Ok(()) => Ok(()),
            Err(refused) => {
                state.count(refused.reason, 1);
                tracing::warn!(peer = %src, reason = ?refused.reason, detail = %refused.detail, "refused a frame");
                if refused.disconnect {
                    if let Some(transport) = state.transport.client() {
                        let mut request = transport.disconnect_request();
                        request.get().set_node(&src.0);
                        request.get().set_reason(refused.detail.as_str());
                        let _ = request.send().promise.await;
                    }
                }
                Err(capnp::Error::failed(format!("frame refused: {}", refused.detail)))
            }
        }
    }

    async fn topics(self: Rc<Self>, _: router::TopicsParams, mut results: router::TopicsResults) -> capnp::Result<()> {
        self.node_user_only("listing topics")?;
        self.state.report_lanes();
        let core = self.state.core();
        let topics: Vec<_> = core.topics().collect();
        let mut list = results.get().init_topics(topics.len() as u32);
        for (i, topic) in topics.into_iter().enumerate() {
            let mut info = list.reborrow().get(i as u32);
            topic.advert.write(info.reborrow().init_advert());
            info.set_creator(&topic.creator.0);
            info.set_scope(topic.scope);
            info.set_policy(topic.policy);
            info.set_last_seq(topic.last_seq);
            info.set_events_cut(topic.events_cut);
            write_identities(info.reborrow().init_subscribers(topic.subscribers.len() as u32), topic.subscribers.iter());
            let slow = core.slow_subscribers(topic);
            write_identities(info.init_slow(slow.len() as u32), slow.iter());
        }
        Ok(())
    }

    async fn sign_advert(self: Rc<Self>, params: router::SignAdvertParams, mut results: router::SignAdvertResults) -> capnp::Result<()> {
        self.node_user_only("signing adverts")?;
        let params = params.get()?;
        let advert = self.state.sign_advert(params.get_addrs()?, params.get_protocols()?).await?;
        results.get().set_advert(advert.get_root_as_reader()?)?;
        Ok(())
    }
}

fn write_identities<'a>(mut list: capnp::data_list::Builder<'_>, identities: impl Iterator<Item = &'a Identity>) {
    for (i, identity) in identities.enumerate() {
        list.set(i as u32, &identity.0);
    }
}

/// An attach in progress: the engine must answer the challenge.
struct Attaching {
    state: Rc<RouterState>,
    challenge: RefCell<Challenge>,
}

impl attachment::Server for Attaching {
    async fn prove(self: Rc<Self>, params: attachment::ProveParams, mut results: attachment::ProveResults) -> capnp::Result<()> {
        let params = params.get()?;
        let state = &self.state;
        let engine = self.challenge.borrow().engine();
        let mut out = results.get();
        let (inbox, want_ring) = (params.get_inbox()?, params.get_ring());
        let mut grant = out.reborrow().init_ring();
        let location = self.challenge.borrow_mut().answer(params.get_signature()?, EngineLocation::read(params.get_location()?));
        let attached = location.and_then(|location| {
            state.attach(location, params.get_public(), inbox.clone(), |generation| match (&state.rings, want_ring) {
                (Some(rings), true) => match rings.open(engine, generation) {
                    Ok(endpoint) => {
                        grant.set_granted(true);
                        grant.set_segment(endpoint.segment.name.as_str());
                        grant.set_doorbell(rings.doorbell_name());
                        grant.set_capacity(rings.capacity() as u32);
                        grant.set_ticket(&rings.ticket(engine));
                        Sink::Ring(endpoint)
                    }
                    Err(error) => {
                        tracing::warn!(engine = %engine, %error, "no rings for this engine; it uses the socket path");
                        grant.set_reason(error.to_string().as_str());
                        // Its send stream is taken under the ticket.
                        grant.set_ticket(&rings.ticket(engine));
                        Sink::Socket(inbox)
                    }
                },
                (None, true) => {
                    grant.set_reason("this router runs without shared-memory rings");
                    Sink::Socket(inbox)
                }
                (Some(rings), false) => {
                    grant.set_ticket(&rings.ticket(engine));
                    Sink::Socket(inbox)
                }
                (None, false) => Sink::Socket(inbox),
            })
        });
        let generation = attached.map_err(|refused| {
            state.attach_refused.set(state.attach_refused.get() + 1);
            tracing::warn!(engine = %engine, %refused, "attach refused");
            capnp::Error::failed(refused.to_string())
        })?;
        let session: engine_session::Client = capnp_rpc::new_client(Session { state: state.clone(), engine, generation });
        out.set_session(session);
        let mut limits = out.init_limits();
        limits.set_node(&state.key.identity().0);
        limits.set_max_message_bytes(state.home.config.limits.max_message_bytes);
        Ok(())
    }
}

/// An attached engine's session. Dropping it (the engine detached or its connection closed)
/// detaches the engine.
struct Session {
    state: Rc<RouterState>,
    engine: Identity,
    generation: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state.detach(self.engine, self.generation);
    }
}

type SendOutcome = Result<(), Refused>;

impl Session {
    /// Reads one message from this session's engine; what cannot be read is refused here.
    fn read(&self, message: netmachine_schema::message_capnp::engine_message::Reader<'_>) -> Result<EngineMessage, Refused> {
        EngineMessage::read(message).map_err(|e| {
            let refused = match e {
                MessageError::UnsupportedDestination(kind) => {
                    Refused::unsupported(format!("destination kind '{kind}' is v2 and not routed by this node"))
                }
                e => Refused::malformed(e.to_string()),
            };
            self.state.count(refused.reason, 1);
            refused
        })
    }
}

fn write_outcome(outcome: SendOutcome, mut result: netmachine_schema::router_capnp::send_result::Builder<'_>) {
    match outcome {
        Ok(()) => result.set_accepted(()),
        Err(refused) => {
            let mut out = result.init_refused();
            out.set_reason(refused.refusal);
            out.set_detail(refused.detail.as_str());
            if let Some(slowest) = refused.slowest {
                out.set_slowest(&slowest.0);
            }
        }
    }
}

fn write_topic_result(outcome: Result<u64, TopicRefused>, result: topic_result::Builder<'_>) {
    match outcome {
        Ok(last_seq) => result.init_done().set_last_seq(last_seq),
        Err(refused) => {
            let mut out = result.init_refused();
            out.set_reason(refused.reason);
            out.set_detail(refused.detail.as_str());
        }
    }
}

fn topic_id(topic: capnp::Result<&[u8]>) -> capnp::Result<Identity> {
    Identity::from_slice("topic", topic?).map_err(|e| capnp::Error::failed(e.to_string()))
}

impl engine_session::Server for Session {
    async fn send(self: Rc<Self>, params: engine_session::SendParams, mut results: engine_session::SendResults) -> capnp::Result<()> {
        let outcome = match self.read(params.get()?.get_message()?) {
            Ok(message) => {
                if matches!(message.dst, Destination::Topic(_)) {
                    self.state.ring_settled(&self.engine).await;
                }
                self.state.submit(self.engine, message, true).outcome().await
            }
            Err(refused) => Err(refused),
        };
        write_outcome(outcome, results.get().init_result());
        Ok(())
    }

    /// Every message goes to the core before any outcome is awaited: a destination that must
    /// wait does not hold up the others, and each destination's messages keep their order.
    async fn send_batch(self: Rc<Self>, params: engine_session::SendBatchParams, mut results: engine_session::SendBatchResults) -> capnp::Result<()> {
        let messages = params.get()?.get_messages()?;
        if messages.iter().any(|m| m.get_dst().is_ok_and(|d| matches!(d.which(), Ok(netmachine_schema::message_capnp::destination::Topic(_))))) {
            self.state.ring_settled(&self.engine).await;
        }
        let mut outcomes = Vec::with_capacity(messages.len() as usize);
        for message in messages.iter() {
            outcomes.push(match self.read(message) {
                Ok(message) => Ok(self.state.submit(self.engine, message, true)),
                Err(refused) => Err(refused),
            });
        }
        let mut list = results.get().init_results(outcomes.len() as u32);
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let outcome = match outcome {
                Ok(settled) => settled.outcome().await,
                Err(refused) => Err(refused),
            };
            write_outcome(outcome, list.reborrow().get(i as u32));
        }
        Ok(())
    }

    async fn detach(self: Rc<Self>, _: engine_session::DetachParams, _: engine_session::DetachResults) -> capnp::Result<()> {
        self.state.detach(self.engine, self.generation);
        Ok(())
    }

    async fn try_send(self: Rc<Self>, params: engine_session::TrySendParams, mut results: engine_session::TrySendResults) -> capnp::Result<()> {
        let outcome = match self.read(params.get()?.get_message()?) {
            Ok(message) => self.state.submit(self.engine, message, false).outcome().await,
            Err(refused) => Err(refused),
        };
        write_outcome(outcome, results.get().init_result());
        Ok(())
    }

    async fn create_topic(self: Rc<Self>, params: engine_session::CreateTopicParams, mut results: engine_session::CreateTopicResults) -> capnp::Result<()> {
        let params = params.get()?;
        let (scope, policy, after) = (params.get_scope()?, params.get_policy()?, params.get_after());
        let outcome = match TopicAdvert::read(params.get_advert()?) {
            Ok(advert) => {
                let topic = advert.topic;
                self.state.change_topic(topic, |core, now| core.create_topic(self.engine, advert, scope, policy, after, now))
            }
            Err(error) => Err(TopicRefused { reason: TopicRefusal::BadAdvert, detail: error.to_string() }),
        };
        if let Err(refused) = &outcome {
            tracing::info!(engine = %self.engine.short(), %refused, "topic create refused");
        }
        write_topic_result(outcome, results.get().init_result());
        Ok(())
    }

    async fn delete_topic(self: Rc<Self>, params: engine_session::DeleteTopicParams, mut results: engine_session::DeleteTopicResults) -> capnp::Result<()> {
        let topic = topic_id(params.get()?.get_topic())?;
        let outcome = self.state.change_topic(topic, |core, now| core.delete_topic(self.engine, topic, now));
        write_topic_result(outcome, results.get().init_result());
        Ok(())
    }

    async fn subscribe(self: Rc<Self>, params: engine_session::SubscribeParams, mut results: engine_session::SubscribeResults) -> capnp::Result<()> {
        let params = params.get()?;
        let (topic, scope, from) = (topic_id(params.get_topic())?, params.get_scope()?, params.get_from());
        let outcome = self.state.change_topic(topic, |core, now| core.subscribe(self.engine, topic, scope, from, now));
        let policy = self.state.core().topic(&topic).map_or(TopicPolicy::Block, |t| t.policy);
        let replay = if outcome.is_ok() { self.state.core().kept_from(&topic, from) } else { Vec::new() };
        write_topic_result(outcome, results.get().init_result());
        if let Ok(topic_result::Done(mut done)) = results.get().get_result()?.which() {
            done.set_policy(policy);
            let mut list = done.init_replay(replay.len() as u32);
            for (i, event) in replay.iter().enumerate() {
                event.write(list.reborrow().get(i as u32));
            }
        }
        Ok(())
    }

    async fn last_seq(self: Rc<Self>, params: engine_session::LastSeqParams, mut results: engine_session::LastSeqResults) -> capnp::Result<()> {
        let topic = topic_id(params.get()?.get_topic())?;
        // After what the engine's rings still have at the main thread has moved the sequence on.
        self.state.ring_settled(&self.engine).await;
        let outcome = self.state.change_topic(topic, |core, _| core.last_seq(self.engine, topic));
        write_topic_result(outcome, results.get().init_result());
        Ok(())
    }

    async fn serve(self: Rc<Self>, params: engine_session::ServeParams, mut results: engine_session::ServeResults) -> capnp::Result<()> {
        let protocol = params.get()?.get_protocol()?.to_str().map_err(|e| capnp::Error::failed(e.to_string()))?.to_string();
        let outcome = self.state.change(|core, now| core.serve(self.engine, &protocol, now));
        let outcome = outcome.map(|()| 0).map_err(|refused| TopicRefused { reason: TopicRefusal::Denied, detail: refused.to_string() });
        write_topic_result(outcome, results.get().init_result());
        Ok(())
    }

    async fn unsubscribe(self: Rc<Self>, params: engine_session::UnsubscribeParams, mut results: engine_session::UnsubscribeResults) -> capnp::Result<()> {
        let topic = topic_id(params.get()?.get_topic())?;
        let outcome = self.state.change_topic(topic, |core, now| core.unsubscribe(self.engine, topic, now));
        write_topic_result(outcome, results.get().init_result());
        Ok(())
    }
}
