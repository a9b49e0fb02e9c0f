# The transport's interface: connections to other nodes (SPEC.md "Transport").
@0xd60ab4f7b57e3783;

using Id = import "identity.capnp";
using Msg = import "message.capnp";
using Svc = import "service.capnp";

enum ConnectRefusal {
  overCapacity @0;
  incompatible @1;
  denied @2;
}

struct TransportEvent {
  node @0 :Id.Identity;
  union {
    connected @1 :Void;
    connectFailed @2 :Text;
    disconnected @3 :Text;
    refused @4 :ConnectRefusal;
    counts :group {
      messagesSent @5 :UInt64;
      messagesReceived @6 :UInt64;
    }
  }
}

interface TransportEvents {
  event @0 (event :TransportEvent) -> ();
}

# The connect handshake, on the first bidirectional stream the connecting node opens.
struct Hello {
  versionMin @0 :UInt16;
  versionMax @1 :UInt16;
  advert @2 :Id.NodeAdvert;          # the sender's own advert
  knownAdvertVersion @3 :UInt32;     # the version of the receiver's advert the sender holds (0: none)
  incarnation @4 :UInt64;            # random per start of the sender's transport: a new one
                                     # means the sender restarted, and its old connection is dead
}

struct HelloAnswer {
  union {
    accepted :group {
      version @0 :UInt16;            # the highest version both speak
      advert @1 :Id.NodeAdvert;      # the answering node's own advert
      incarnation @4 :UInt64;        # as in Hello, for the answering node's transport
    }
    refused :group {
      reason @2 :ConnectRefusal;
      detail @3 :Text;
    }
  }
}

struct SendOutcome {
  union {
    queued @0 :Void;
    refused @1 :Text;                # the node is unknown, banned, or its queue stayed full
  }
}

interface Transport extends(Svc.Service) {
  # Queues a serialized, signed P2PFrame for `dst`; waits while that peer's queue is full.
  # The frame is dropped (and counted) if it cannot be sent before `expiry` (0: never).
  # Fails with `overloaded`, rather than refusing, while a newly started transport has not read
  # its peers from the identity store yet: the caller keeps the frame and tries again.
  sendFrame @0 (dst :Id.Identity, frame :Data, expiry :Id.Time) -> (outcome :SendOutcome);
  connect @1 (node :Id.Identity) -> ();
  disconnect @2 (node :Id.Identity, reason :Text) -> ();
  connectedNodes @3 () -> (nodes :List(ConnectedNode));
  addPeer @4 (advert :Id.NodeAdvert, trust :UInt8, permanent :Bool) -> ();
  removePeer @5 (node :Id.Identity) -> ();
  events @6 (sink :TransportEvents) -> (subscription :Svc.Subscription);
  # This node's current signed advert.
  advert @7 () -> (advert :Id.NodeAdvert);
}

# What a bulk stream between two nodes is for; the first byte on it.
enum StreamKind {
  block @0;          # a block request, answered by the storage service
}

struct ConnectedNode {
  node @0 :Id.Identity;
  address @1 :Text;
  public @2 :Bool;                   # connected under the public network rules
  rttMicros @3 :UInt64;
  framesSent @4 :UInt64;
  framesReceived @5 :UInt64;
}
