//! Signing this node's advert for transport (the router holds the node key): the stored advert
//! is looked up, `core::advert` decides whether it still says the same, and a new one is stored.

use crate::core::{self, advert::Advert};
use crate::shell::RouterState;
use netmachine_schema::identity_capnp::{identity_record, node_advert, weighted_address};
use netmachine_schema::identity_store_capnp::update_result;
use netmachine_schema::time::now_ms;
use std::time::Duration;

impl RouterState {
    /// The advert for `addrs` and `protocols`, signed and stored as this node's own record.
    pub async fn sign_advert(&self, addrs: capnp::struct_list::Reader<'_, weighted_address::Owned>, protocols: capnp::text_list::Reader<'_>) -> capnp::Result<Advert> {
        let node = self.key.identity();
        let store = self.identity_store.client_within(Duration::from_secs(2)).await;
        let stored = match &store {
            Some(store) => {
                let mut request = store.lookup_request();
                request.get().set_id(&node.0);
                let answer = request.send().promise.await?;
                let answer = answer.get()?;
                match answer.get_found().then(|| answer.get_record()).transpose()?.map(|r| r.which()).transpose()? {
                    Some(identity_record::Node(record)) => {
                        let mut copy = capnp::message::Builder::new_default();
                        copy.set_root(record?.get_advert()?)?;
                        Some(copy)
                    }
                    _ => None,
                }
            }
            None => None,
        };
        let stored = stored.as_ref().map(|s| s.get_root_as_reader::<node_advert::Reader>()).transpose()?;
        let (advert, new) = core::advert::sign(&self.key, addrs, protocols, stored, now_ms())?;
        let root = advert.get_root_as_reader::<node_advert::Reader>()?;
        if !new {
            return Ok(advert);
        }
        if let Some(store) = store {
            let record = core::advert::own_record(root)?;
            let mut request = store.update_request();
            request.get().set_id(&node.0);
            request.get().set_record(record.get_root_as_reader::<identity_record::Reader>()?)?;
            let answer = request.send().promise.await?;
            if let update_result::Refused(refused) = answer.get()?.get_result()?.which()? {
                let detail = refused.get_detail()?.to_string().unwrap_or_default();
                tracing::warn!(reason = ?refused.get_reason(), %detail, "the identity store refused this node's new advert");
            }
        }
        tracing::info!(version = root.get_version(), "signed a new advert for this node");
        Ok(advert)
    }
}
