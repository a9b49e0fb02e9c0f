//! The connect handshake of the specification's Transport: the dialing node sends Hello with the protocol
//! versions it speaks and its advert; the answering node replies with the highest common
//! version and its own advert, or refuses with OverCapacity, Incompatible or Denied.

use netmachine_schema::identity_capnp::node_advert;
use netmachine_schema::transport_capnp::{hello, hello_answer, ConnectRefusal};
use super::advert::read_message;
use netmachine_schema::Identity;

/// The protocol versions this node speaks.
pub const VERSION_MIN: u16 = 1;
pub const VERSION_MAX: u16 = 1;

/// The highest version both sides speak.
pub fn negotiate(their_min: u16, their_max: u16) -> Option<u16> {
    let low = their_min.max(VERSION_MIN);
    let high = their_max.min(VERSION_MAX);
    (low <= high).then_some(high)
}

/// A Hello, as read.
pub struct Hello {
    pub version_min: u16,
    pub version_max: u16,
    /// The sender's advert, as a standalone message.
    pub advert: Vec<u8>,
    /// The sender's transport incarnation (`core::settle`).
    pub incarnation: u64,
}

/// The answer, as read.
pub enum Answer {
    Accepted { version: u16, advert: Vec<u8>, incarnation: u64 },
    Refused { reason: ConnectRefusal, detail: String },
}

fn standalone(advert: node_advert::Reader<'_>) -> capnp::Result<Vec<u8>> {
    let mut message = capnp::message::Builder::new_default();
    message.set_root(advert)?;
    Ok(capnp::serialize::write_message_to_words(&message))
}

pub fn hello(advert: &[u8], known_advert_version: u32, incarnation: u64) -> capnp::Result<Vec<u8>> {
    let advert = read_message(advert)?;
    let mut message = capnp::message::Builder::new_default();
    let mut hello = message.init_root::<hello::Builder>();
    hello.set_version_min(VERSION_MIN);
    hello.set_version_max(VERSION_MAX);
    hello.set_known_advert_version(known_advert_version);
    hello.set_incarnation(incarnation);
    hello.set_advert(advert.get_root::<node_advert::Reader>()?)?;
    Ok(capnp::serialize::write_message_to_words(&message))
}

pub fn read_hello(bytes: &[u8]) -> capnp::Result<Hello> {
    let message = read_message(bytes)?;
    let hello = message.get_root::<hello::Reader>()?;
    Ok(Hello {
        version_min: hello.get_version_min(),
        version_max: hello.get_version_max(),
        advert: standalone(hello.get_advert()?)?,
        incarnation: hello.get_incarnation(),
    })
}

/// Reads `node`'s Hello and checks what can be checked before admission: a version both
/// sides speak, and an advert that is `node`'s own, signed by it. The refusal says why.
pub fn check_hello(node: Identity, bytes: &[u8]) -> Result<(Hello, u16), (ConnectRefusal, String)> {
    let hello = read_hello(bytes).map_err(|e| (ConnectRefusal::Incompatible, format!("unreadable hello: {e}")))?;
    let version = negotiate(hello.version_min, hello.version_max).ok_or_else(|| {
        let detail = format!(
            "no common protocol version: peer speaks {}..={}, this node {VERSION_MIN}..={VERSION_MAX}",
            hello.version_min, hello.version_max
        );
        (ConnectRefusal::Incompatible, detail)
    })?;
    super::advert::check_bytes(node, &hello.advert).map_err(|detail| (ConnectRefusal::Denied, detail))?;
    Ok((hello, version))
}

pub fn accepted(version: u16, advert: &[u8], incarnation: u64) -> capnp::Result<Vec<u8>> {
    let advert = read_message(advert)?;
    let mut message = capnp::message::Builder::new_default();
    let mut accepted = message.init_root::<hello_answer::Builder>().init_accepted();
    accepted.set_version(version);
    accepted.set_incarnation(incarnation);
    accepted.set_advert(advert.get_root::<node_advert::Reader>()?)?;
    Ok(capnp::serialize::write_message_to_words(&message))
}

pub fn refused(reason: ConnectRefusal, detail: &str) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    let mut refused = message.init_root::<hello_answer::Builder>().init_refused();
    refused.set_reason(reason);
    refused.set_detail(detail);
    capnp::serialize::write_message_to_words(&message)
}

pub fn read_answer(bytes: &[u8]) -> capnp::Result<Answer> {
    let message = read_message(bytes)?;
    Ok(match message.get_root::<hello_answer::Reader>()?.which()? {
        hello_answer::Accepted(accepted) => Answer::Accepted {
            version: accepted.get_version(),
            advert: standalone(accepted.get_advert()?)?,
            incarnation: accepted.get_incarnation(),
        },
        hello_answer::Refused(refused) => Answer::Refused {
            reason: refused.get_reason()?,
            detail: refused.get_detail()?.to_string().unwrap_or_default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_common_version_wins_and_disjoint_ranges_fail() {
        assert_eq!(negotiate(1, 1), Some(1));
        assert_eq!(negotiate(0, 5), Some(VERSION_MAX));
        assert_eq!(negotiate(2, 3), None);
        assert_eq!(negotiate(0, 0), None);
    }

    #[test]
    fn hello_and_answers_round_trip() {
        let mut message = capnp::message::Builder::new_default();
        let mut advert = message.init_root::<node_advert::Builder>();
        advert.set_id(&[7; 32]);
        advert.set_version(3);
        let advert = capnp::serialize::write_message_to_words(&message);
        let read = read_hello(&hello(&advert, 0, 41).unwrap()).unwrap();
        assert_eq!((read.version_min, read.version_max, read.incarnation), (VERSION_MIN, VERSION_MAX, 41));
        assert_eq!(read.advert, advert);
        match read_answer(&accepted(1, &advert, 42).unwrap()).unwrap() {
            Answer::Accepted { version: 1, advert: a, incarnation: 42 } => assert_eq!(a, advert),
            _ => panic!("expected accepted"),
        }
        match read_answer(&refused(ConnectRefusal::Denied, "who?")).unwrap() {
            Answer::Refused { reason: ConnectRefusal::Denied, detail } => assert_eq!(detail, "who?"),
            _ => panic!("expected refused"),
        }
        assert!(read_hello(b"garbage!").is_err());
    }
}
