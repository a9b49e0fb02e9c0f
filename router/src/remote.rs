//! Frames to other nodes: the core cuts a batch from a node's outbox (`Output::Transmit`); this
//! seals it with the node key, hands it to transport, and tells the core what became of it.
//! While transport is down the core sends what it kept again once transport is back.

use crate::core::{frame, HandOver, Header, Input, Outgoing};
use crate::shell::RouterState;
use netmachine_schema::transport_capnp::send_outcome;
use netmachine_schema::Identity;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

impl RouterState {
    /// Seals `batch` for `node`, numbered by `header`, and gives it to transport.
    pub(crate) async fn hand_over(self: Rc<Self>, node: Identity, header: Header, batch: Arc<Vec<Outgoing>>) {
        let outcome = match self.transport.client_within(Duration::from_secs(1)).await {
            None => HandOver::Unavailable,
            Some(transport) => {
                // Sealed only once transport is there: a batch that goes back is not signed twice.
                let sealed = frame::seal(&self.key, node, &header, &batch);
                let mut request = transport.send_frame_request();
                request.get().set_dst(&node.0);
                request.get().set_frame(&sealed.bytes);
                request.get().set_expiry(sealed.expiry);
                match request.send().promise.await {
                    Err(error) => {
                        tracing::info!(%error, "transport did not take a frame; trying again");
                        HandOver::Unavailable
                    }
                    Ok(answer) => {
                        let which = answer.get().and_then(|a| a.get_outcome()).and_then(|o| Ok(o.which()?));
                        match which {
                            Ok(send_outcome::Queued(())) => HandOver::Queued { messages: sealed.messages },
                            Ok(send_outcome::Refused(reason)) => {
                                let detail = reason.ok().and_then(|r| r.to_string().ok()).unwrap_or_default();
                                HandOver::Refused { messages: sealed.messages, detail }
                            }
                            Err(error) => HandOver::Refused { messages: sealed.messages, detail: error.to_string() },
                        }
                    }
                }
            }
        };
        self.feed(Input::HandedOver { node, outcome });
    }
}
