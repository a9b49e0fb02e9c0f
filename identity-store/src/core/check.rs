//! Whether an update may replace what the store holds: shapes, ids, the signatures of adverts
//! and engine locations, versions (a location's time), and room for a new record; and which
//! records a `list` of a kind returns. Pure logic over Cap'n Proto readers; no I/O.

use netmachine_schema::identity_capnp::{identity_record, RecordKind};
use netmachine_schema::identity_store_capnp::RefusalReason;
use netmachine_schema::{signing, EngineLocation, Identity};

/// Why an update was refused, with a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

fn refuse(reason: RefusalReason, detail: impl Into<String>) -> Refusal {
    Refusal { reason, detail: detail.into() }
}

impl From<capnp::Error> for Refusal {
    fn from(e: capnp::Error) -> Self {
        refuse(RefusalReason::Malformed, e.to_string())
    }
}

impl From<capnp::NotInSchema> for Refusal {
    fn from(e: capnp::NotInSchema) -> Self {
        refuse(RefusalReason::Malformed, e.to_string())
    }
}

fn same_id(key: &Identity, field: &'static str, bytes: &[u8]) -> Result<(), Refusal> {
    let id = Identity::from_slice(field, bytes).map_err(|e| refuse(RefusalReason::Malformed, e.to_string()))?;
    if id != *key {
        return Err(refuse(
            RefusalReason::IdMismatch,
            format!("{field} is {id}, but the record is stored under {key}"),
        ));
    }
    Ok(())
}

fn signed_by(key: &Identity, what: &str, payload: &[u8], sig: &[u8]) -> Result<(), Refusal> {
    key.verify(payload, sig)
        .map_err(|e| refuse(RefusalReason::BadSignature, format!("{what} signature by {key}: {e}")))
}

/// Checks that `new` may be stored under `key` in place of `existing`.
pub fn check_update(
    key: &Identity,
    new: identity_record::Reader<'_>,
    existing: Option<identity_record::Reader<'_>>,
) -> Result<(), Refusal> {
    use identity_record::Which;
    match (new.which()?, existing.map(|e| e.which()).transpose()?) {
        (Which::Engine(engine), old) => {
            let engine = engine?;
            same_id(key, "engine.id", engine.get_id()?)?;
            let location = EngineLocation::read(engine).map_err(|e| refuse(RefusalReason::Malformed, e.to_string()))?;
            location.verify().map_err(|e| refuse(RefusalReason::BadSignature, e.to_string()))?;
            match old {
                Some(Which::Engine(old)) => {
                    let old_at = old?.get_at();
                    if location.at < old_at {
                        return Err(refuse(
                            RefusalReason::OlderVersion,
                            format!("the engine location of {} is older than the stored one ({old_at})", location.at),
                        ));
                    }
                    Ok(())
                }
                old => kind_unchanged(old.as_ref(), |_| false),
            }
        }
        (Which::Node(node), old) => {
            let node = node?;
            same_id(key, "node.id", node.get_id()?)?;
            let advert = node.get_advert()?;
            same_id(key, "node.advert.id", advert.get_id()?)?;
            let payload = signing::node_advert(advert)?;
            signed_by(key, "node advert", &payload, advert.get_sig()?)?;
            match old {
                Some(Which::Node(old)) => {
                    let old = old?.get_advert()?;
                    let (new_v, old_v) = (advert.get_version(), old.get_version());
                    if new_v < old_v {
                        return Err(refuse(
                            RefusalReason::OlderVersion,
                            format!("node advert version {new_v} is older than the stored version {old_v}"),
                        ));
                    }
                    if new_v == old_v && payload != signing::node_advert(old)? {
                        return Err(refuse(
                            RefusalReason::OlderVersion,
                            format!("node advert version {new_v} differs from the stored advert of the same version; raise the version"),
                        ));
                    }
                    Ok(())
                }
                old => kind_unchanged(old.as_ref(), |_| false),
            }
        }
        (Which::Topic(topic), old) => {
            let topic = topic?;
            same_id(key, "topic.id", topic.get_id()?)?;
            let advert = topic.get_advert()?;
            same_id(key, "topic.advert.topic", advert.get_topic()?)?;
            Identity::from_slice("topic.advert.publisher", advert.get_publisher()?)
                .map_err(|e| refuse(RefusalReason::Malformed, e.to_string()))?;
            signed_by(key, "topic advert", &signing::topic_advert(advert)?, advert.get_sig()?)?;
            match old {
                Some(Which::Topic(old)) => {
                    let (new_c, old_c) = (advert.get_created(), old?.get_advert()?.get_created());
                    if new_c < old_c {
                        return Err(refuse(
                            RefusalReason::OlderVersion,
                            format!("topic advert created at {new_c} is older than the stored one ({old_c})"),
                        ));
                    }
                    Ok(())
                }
                old => kind_unchanged(old.as_ref(), |_| false),
            }
        }
        (Which::Domain(domain), old) => {
            same_id(key, "domain.id", domain?.get_id()?)?;
            kind_unchanged(old.as_ref(), |w| matches!(w, Which::Domain(_)))
        }
    }
}

fn kind_unchanged(
    old: Option<&identity_record::WhichReader<'_>>,
    same_kind: impl Fn(&identity_record::WhichReader<'_>) -> bool,
) -> Result<(), Refusal> {
    match old {
        Some(old) if !same_kind(old) => Err(refuse(
            RefusalReason::Malformed,
            format!("the id already holds a record of another kind ({}); delete it first", kind_name(old)),
        )),
        _ => Ok(()),
    }
}

/// Whether the store has room for a record under a new id, holding `count` of at most `max`.
pub fn check_room(count: u64, max: u64) -> Result<(), Refusal> {
    match count >= max {
        true => Err(refuse(RefusalReason::Full, format!("the store holds limits.max_records = {max} records"))),
        false => Ok(()),
    }
}

/// Whether a record is of `kind` (a `list` filter).
pub fn of_kind<A, B, C, D>(kind: RecordKind, which: &identity_record::Which<A, B, C, D>) -> bool {
    use identity_record::Which;
    matches!(
        (kind, which),
        (RecordKind::Any, _) | (RecordKind::Engine, Which::Engine(_)) | (RecordKind::Node, Which::Node(_)) | (RecordKind::Topic, Which::Topic(_)) | (RecordKind::Domain, Which::Domain(_))
    )
}

/// The record kind's name as operators see it.
pub fn kind_name<A, B, C, D>(which: &identity_record::Which<A, B, C, D>) -> &'static str {
    match which {
        identity_record::Which::Engine(_) => "engine",
        identity_record::Which::Node(_) => "node",
        identity_record::Which::Topic(_) => "topic",
        identity_record::Which::Domain(_) => "domain",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use netmachine_schema::identity_capnp::node_advert;
    use netmachine_schema::Keypair;

    pub(crate) fn node_record(key: &Keypair, version: u32, port: u16, forge: bool) -> capnp::message::Builder<capnp::message::HeapAllocator> {
        let mut wire = capnp::message::Builder::new_default();
        let mut node = wire.init_root::<identity_record::Builder>().init_node();
        node.set_id(&key.identity().0);
        node.set_trust(200);
        let mut advert: node_advert::Builder = node.init_advert();
        advert.set_id(&key.identity().0);
        advert.set_version(version);
        let mut quic = advert.reborrow().init_addrs(1).get(0).init_address().init_quic();
        quic.set_ip(&[127, 0, 0, 1]);
        quic.set_port(port);
        let payload = signing::node_advert(advert.reborrow_as_reader()).unwrap();
        let signer = if forge { Keypair::generate() } else { key.clone() };
        advert.set_sig(&signer.sign(&payload));
        wire
    }

    pub(crate) fn read(wire: &capnp::message::Builder<capnp::message::HeapAllocator>) -> identity_record::Reader<'_> {
        wire.get_root_as_reader().unwrap()
    }

    #[test]
    fn a_signed_node_advert_is_accepted_and_a_newer_one_replaces_it() {
        let key = Keypair::generate();
        let v1 = node_record(&key, 1, 4000, false);
        let v2 = node_record(&key, 2, 4001, false);
        assert_eq!(check_update(&key.identity(), read(&v1), None), Ok(()));
        assert_eq!(check_update(&key.identity(), read(&v2), Some(read(&v1))), Ok(()));
        assert_eq!(check_update(&key.identity(), read(&v1), Some(read(&v1))), Ok(()));
    }

    #[test]
    fn forged_older_and_conflicting_adverts_are_refused_with_reasons() {
        let key = Keypair::generate();
        let forged = node_record(&key, 1, 4000, true);
        let refusal = check_update(&key.identity(), read(&forged), None).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::BadSignature);
        assert!(refusal.detail.contains("does not verify"), "{}", refusal.detail);

        let (v1, v2) = (node_record(&key, 1, 4000, false), node_record(&key, 2, 4000, false));
        let refusal = check_update(&key.identity(), read(&v1), Some(read(&v2))).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::OlderVersion);
        assert!(refusal.detail.contains("older than the stored version 2"), "{}", refusal.detail);

        let other_port = node_record(&key, 1, 4999, false);
        let refusal = check_update(&key.identity(), read(&other_port), Some(read(&v1))).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::OlderVersion);
    }

    #[test]
    fn a_record_under_someone_elses_id_is_refused() {
        let key = Keypair::generate();
        let record = node_record(&key, 1, 4000, false);
        let stranger = Keypair::generate().identity();
        let refusal = check_update(&stranger, read(&record), None).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::IdMismatch);
    }

    pub(crate) fn engine_record(location: &EngineLocation) -> capnp::message::Builder<capnp::message::HeapAllocator> {
        let mut wire = capnp::message::Builder::new_default();
        location.write(wire.init_root::<identity_record::Builder>().init_engine());
        wire
    }

    #[test]
    fn engine_locations_must_be_signed_by_the_engine_and_only_a_later_one_replaces_another() {
        let engine = Keypair::generate();
        let (a, b) = (Keypair::generate().identity(), Keypair::generate().identity());
        let id = engine.identity();
        let on_a = engine_record(&EngineLocation::sign(&engine, a, 100));
        let on_b = engine_record(&EngineLocation::sign(&engine, b, 200));
        assert_eq!(check_update(&id, read(&on_a), None), Ok(()));
        assert_eq!(check_update(&id, read(&on_b), Some(read(&on_a))), Ok(()));
        let refusal = check_update(&id, read(&on_a), Some(read(&on_b))).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::OlderVersion);
        // A node claiming the engine with a location the engine never signed.
        let claimed = EngineLocation { node: Keypair::generate().identity(), at: 300, ..EngineLocation::sign(&engine, b, 200) };
        let refusal = check_update(&id, read(&engine_record(&claimed)), Some(read(&on_b))).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::BadSignature);
        let unsigned = EngineLocation { sig: [0; 64], ..EngineLocation::sign(&engine, a, 400) };
        assert_eq!(check_update(&id, read(&engine_record(&unsigned)), None).unwrap_err().reason, RefusalReason::BadSignature);
    }

    #[test]
    fn an_engine_record_with_a_short_node_id_is_malformed() {
        let key = Keypair::generate().identity();
        let mut wire = capnp::message::Builder::new_default();
        let mut engine = wire.init_root::<identity_record::Builder>().init_engine();
        engine.set_id(&key.0);
        engine.set_node(&[1; 3]);
        let refusal = check_update(&key, read(&wire), None).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::Malformed);
        assert!(refusal.detail.contains("engine.node must be 32 bytes"), "{}", refusal.detail);
    }
}
