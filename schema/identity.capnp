# Identities, adverts and the records the identity store keeps (SPEC.md "Identities").
@0xe292f953495eafd2;

using Identity = Data;   # an ed25519 public key, exactly 32 bytes
using Signature = Data;  # an ed25519 signature, exactly 64 bytes; empty means "not signed"
using Time = UInt64;     # milliseconds since the Unix epoch
using ContentId = Data;  # a BLAKE3 digest, exactly 32 bytes

struct QuicAddress {
  ip @0 :Data;           # 4 bytes (IPv4) or 16 bytes (IPv6)
  port @1 :UInt16;
  certIssuer @2 :Identity; # the key that must have signed the peer's TLS certificate
}

struct TransportAddress {
  union {
    quic @0 :QuicAddress;
    opaque @1 :Data;     # an address kind this version does not know (v2: relays); kept, not used
  }
}

struct WeightedAddress {
  address @0 :TransportAddress;
  weight @1 :UInt8;      # higher is preferred
}

# A node's signed statement of where it can be reached. Signed by `id`; a higher `version`
# replaces a lower one.
struct NodeAdvert {
  id @0 :Identity;
  addrs @1 :List(WeightedAddress);
  version @2 :UInt32;
  created @3 :Time;
  protocols @4 :List(Text);  # protocol names and versions the node speaks
  sig @5 :Signature;
}

# A topic's signed statement of who may publish on it. Signed by the topic key.
struct TopicAdvert {
  topic @0 :Identity;
  publisher @1 :Identity;
  tags @2 :List(Text);
  created @3 :Time;
  sig @4 :Signature;
}

struct TransportPrefs {
  ordered @0 :Bool = true;
  reliable @1 :Bool = true;
  security @2 :Security;
  enum Security {
    authenticated @0;    # the channel authenticates both ends (QUIC/TLS always does)
    encrypted @1;        # ... and must also be encrypted
  }
}

struct ConnectionPrefs {
  permanent @0 :Bool;    # keep a connection open and re-establish it when lost
}

# Where an engine is attached, signed by the engine itself when it attaches (`engineLocation`
# in schema/src/signing.rs): no node can claim another node's engine, and of two records for one
# engine the one with the later `at` wins.
struct EngineRecord {
  id @0 :Identity;
  node @1 :Identity;     # the node the engine is attached to
  at @2 :Time;           # when it attached there, by the engine's clock
  sig @3 :Signature;     # by the engine
}

struct NodeRecord {
  id @0 :Identity;
  advert @1 :NodeAdvert;
  trust @2 :UInt8 = 128; # 0 banned, 128 default, 255 full
  reputation @3 :Int32;
  transportPrefs @4 :TransportPrefs;
  connectionPrefs @5 :ConnectionPrefs;
}

struct TopicRecord {
  id @0 :Identity;
  advert @1 :TopicAdvert;
  node @2 :Identity;     # the node that announced it, where the topic is held (empty: unknown)
}

struct DomainRecord {    # v2: domains; stored and listed, not interpreted
  id @0 :Identity;
  advert @1 :Data;
}

struct IdentityRecord {
  union {
    engine @0 :EngineRecord;
    node @1 :NodeRecord;
    topic @2 :TopicRecord;
    domain @3 :DomainRecord;
  }
}

enum RecordKind {
  any @0;
  engine @1;
  node @2;
  topic @3;
  domain @4;
}
