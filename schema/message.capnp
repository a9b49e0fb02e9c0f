# What engines and nodes send each other: EngineMessage, the signed P2P frame that carries
# messages between nodes, pub/sub events and block requests (SPEC.md "Messages", "Storage").
@0xf2039a6864b60728;

using Id = import "identity.capnp";

struct Destination {
  union {
    engine @0 :Id.Identity;
    node @1 :Id.Identity;
    topic @2 :Id.Identity;
    relay @3 :Data;          # v2: a relayed destination; refused by v1 routers
    domain @4 :Id.Identity;  # v2: anycast to a domain; refused by v1 routers
  }
}

enum Scope {
  local @0;
  domain @1;
  any @2;
}

struct RoutingPrefs {
  scope @0 :Scope = any;
}

struct EngineMessage {
  src @0 :Id.Identity;
  dst @1 :Destination;
  id @2 :UInt64;             # unique per (src, dst)
  replyTo :union {
    none @3 :Void;
    id @4 :UInt64;           # the id of the request this answers
  }
  expiry :union {
    never @5 :Void;
    at @6 :Id.Time;
  }
  routing @7 :RoutingPrefs;
  transport @8 :Id.TransportPrefs;
  protocol @9 :Text;
  body @10 :Data;
  sig @11 :Id.Signature;     # by src over every field above; empty when unsigned
  stamp @12 :DeliveryStamp;  # written by the router that took this message from another node's frame; never signed
}

# What one node sends another: a batch of payloads under one node signature. The signature
# covers the batch's exact bytes, through their BLAKE3 hash (see `p2p_frame` in
# schema/src/signing.rs), so a receiver verifies before it parses the batch.
struct P2PFrame {
  src @0 :Id.Identity;
  dst @1 :Id.Identity;
  batch @2 :Data;            # a serialized P2PBatch
  sig @3 :Id.Signature;      # by the src node
}

# Delivery between nodes is acknowledged. Each router numbers the frames it sends each other
# node (`seq`, from 1, within `session`: its run, later runs larger); the receiving router takes
# them in order, drops what it has taken already, and acknowledges each frame once every message
# in it is placed or counted as dropped. The sender keeps what is unacknowledged and sends it
# again, in order, after a connection is lost or the receiver restarts.
struct P2PBatch {
  payloads @0 :List(P2PPayload);
  session @1 :UInt64;        # the sending router's numbering, kept across its restarts while its log of unacknowledged frames is; 0: frames are not numbered
  seq @2 :UInt64;            # this frame's number; 0: it carries only an acknowledgement
  keptFrom @3 :UInt64;       # the sender keeps frames from this number on: the earlier ones were acknowledged
  ack @4 :Acknowledgement;   # of the frames the receiver of this one sent
  run @5 :UInt64;            # when the sending router started (ns): a later run lost what it had taken in, so the receiver sends its unacknowledged frames again
}

# Which of a node's frames the router acknowledging them has accepted.
struct Acknowledgement {
  session @0 :UInt64;        # the numbering of the node whose frames these are; 0: no acknowledgement
  through @1 :UInt64;        # every frame up to this one
  ranges @2 :List(SeqRange); # and these, beyond `through`
  received @3 :UInt64;       # the highest frame taken in, whose messages may still wait for room
}

# Where a message from another node came in: its frame and place in it. Per sending engine and
# node, an engine's deliveries come in increasing (session, seq, index); one that does not was
# delivered already, by a router that was killed before its frame was acknowledged.
struct DeliveryStamp {
  node @0 :Id.Identity;      # the node whose frame carried it
  session @1 :UInt64;
  seq @2 :UInt64;
  index @3 :UInt32;          # among the frame's messages
}

struct SeqRange {
  first @0 :UInt64;
  last @1 :UInt64;
}

struct P2PPayload {
  union {
    engine @0 :EngineMessage;
    relay @1 :Data;          # v2: RelayMessage
    engines @2 :EngineAnnouncement;
  }
}

# Which engines are attached to the sending node: all of them (`full`, sent when a connection
# comes up) or what changed since. Receivers record them as Engine records for routing, and the
# adverts of the topics created on the sending node (scope Any) as Topic records, so that a
# pubsub service finds a topic's advert and, through its publisher's location, its node.
struct EngineAnnouncement {
  full @0 :Bool;
  attached @1 :List(Id.EngineRecord);  # each signed by its engine
  detached @2 :List(Id.Identity);
  topics @3 :List(Id.TopicAdvert);     # each signed by its topic key
}

# A pub/sub event. Receivers detect loss from gaps in `seq`.
struct Event {
  topic @0 :Id.Identity;
  publisher @1 :Id.Identity;
  seq @2 :UInt32;            # per publisher
  deps @3 :List(Id.ContentId);
  body @4 :Data;
  sig @5 :Id.Signature;      # by the publisher
}

struct BlockPrefs {
  expiry @0 :Id.Time;        # 0: keep until collected by policy
  minTrust @1 :UInt8;        # serve only to nodes trusted at least this much
}

struct BlockPut {
  id @0 :Id.ContentId;       # BLAKE3 of content
  content @1 :Data;
  prefs @2 :BlockPrefs;
}

struct BlockGet {
  id @0 :Id.ContentId;
}

struct BlockResponse {
  id @0 :Id.ContentId;
  content @1 :Data;
}

struct StorageCommitment {
  chunk @0 :Id.ContentId;
  node @1 :Id.Identity;
  expiry @2 :Id.Time;
  sig @3 :Id.Signature;      # by node
}
