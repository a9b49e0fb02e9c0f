//! Finding a topic on other nodes: its advert, which routers record in the identity store when a
//! connected node announces it, with the node that announced it (else the node its publisher is
//! attached to, from the publisher's signed location in the same store). And telling a node's
//! identity from an engine's.

use netmachine_schema::identity_capnp::identity_record;
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_schema::{EngineLocation, Identity, TopicAdvert};

/// The topic's advert (checked against the topic key) and its publisher's node; `None` while the
/// store does not know both.
pub async fn locate(store: &identity_store::Client, topic: Identity) -> Result<Option<(TopicAdvert, Identity)>, String> {
    let Some((advert, held_by)) = lookup(store, topic, |record| match record {
        identity_record::Topic(topic) => {
            let topic = topic.map_err(|e| e.to_string())?;
            let advert = TopicAdvert::read(topic.get_advert().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            let node = topic.get_node().map_err(|e| e.to_string())?;
            Ok(Some((advert, Identity::from_slice("topic.node", node).ok())))
        }
        _ => Ok(None),
    })
    .await?
    else {
        return Ok(None);
    };
    advert.verify().map_err(|e| format!("the stored advert of topic {topic}: {e}"))?;
    if let Some(node) = held_by {
        return Ok(Some((advert, node)));
    }
    let node = lookup(store, advert.publisher, |record| match record {
        identity_record::Engine(engine) => {
            let engine = engine.map_err(|e| e.to_string())?;
            EngineLocation::read(engine).map(|location| Some(location.node)).map_err(|e| e.to_string())
        }
        _ => Ok(None),
    })
    .await?;
    Ok(node.map(|node| (advert, node)))
}

/// Whether the store holds `id` as a node (a node record, with its advert).
pub async fn is_node(store: &identity_store::Client, id: Identity) -> Result<bool, String> {
    let node = lookup(store, id, |record| Ok(matches!(record, identity_record::Node(_)).then_some(())));
    Ok(node.await?.is_some())
}

/// The store's record of `id`, read by `read` if it is of the kind it wants.
async fn lookup<T>(store: &identity_store::Client, id: Identity, read: impl FnOnce(identity_record::WhichReader<'_>) -> Result<Option<T>, String>) -> Result<Option<T>, String> {
    let fail = |e: capnp::Error| format!("identity store lookup of {id}: {e}");
    let mut request = store.lookup_request();
    request.get().set_id(&id.0);
    let answer = request.send().promise.await.map_err(fail)?;
    let answer = answer.get().map_err(fail)?;
    if !answer.get_found() {
        return Ok(None);
    }
    let record = answer.get_record().map_err(fail)?.which().map_err(|e| format!("identity store record of {id}: {e}"))?;
    read(record).map_err(|e| format!("identity store record of {id}: {e}"))
}
