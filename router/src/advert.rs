//! This node's advert, signed by the router (which holds the node key) for the addresses
//! transport bound. The same advert is returned while its content does not change; otherwise
//! a new one is made with a version above both the stored one and the current time in seconds,
//! so versions only grow even if the identity store lost the old advert.

use crate::shell::RouterState;
use netmachine_schema::identity_capnp::{identity_record, node_advert, weighted_address};
use netmachine_schema::{signing, time::now_ms};
use std::time::Duration;

type Advert = capnp::message::Builder<capnp::message::HeapAllocator>;

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
        let mut advert = capnp::message::Builder::new_default();
        {
            let mut root = advert.init_root::<node_advert::Builder>();
            root.set_id(&node.0);
            root.set_addrs(addrs)?;
            root.set_protocols(protocols)?;
        }
        if let Some(stored) = &stored {
            let stored = stored.get_root_as_reader::<node_advert::Reader>()?;
            let mut root = advert.get_root::<node_advert::Builder>()?;
            root.set_version(stored.get_version());
            root.set_created(stored.get_created());
            if signing::node_advert(root.reborrow_as_reader())? == signing::node_advert(stored)? {
                root.set_sig(stored.get_sig()?);
                return Ok(advert);
            }
        }
        let previous = stored.as_ref().map_or(Ok(0), |s| s.get_root_as_reader::<node_advert::Reader>().map(|a| a.get_version()))?;
        let now_secs = (now_ms() / 1000) as u32;
        let mut root = advert.get_root::<node_advert::Builder>()?;
        root.set_version(previous.saturating_add(1).max(now_secs));
        root.set_created(now_ms());
        let signature = self.key.sign(&signing::node_advert(root.reborrow_as_reader())?);
        root.set_sig(&signature);
        if let Some(store) = store {
            let mut record = capnp::message::Builder::new_default();
            let mut own = record.init_root::<identity_record::Builder>().init_node();
            own.set_id(&node.0);
            own.set_trust(255);
            own.set_advert(root.reborrow_as_reader())?;
            let mut request = store.update_request();
            request.get().set_id(&node.0);
            request.get().set_record(record.get_root_as_reader::<identity_record::Reader>()?)?;
            request.send().promise.await?;
        }
        tracing::info!(version = root.get_version(), "signed a new advert for this node");
        Ok(advert)
    }
}
