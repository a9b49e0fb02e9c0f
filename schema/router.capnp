# The router's interface: engines attach to it, and the node's other services hand it frames.
@0xe1edda0988db7c3d;

using Id = import "identity.capnp";
using Msg = import "message.capnp";
using Svc = import "service.capnp";

interface Router extends(Svc.Service) {
  # First step of attaching an engine: the router answers with a challenge that the engine
  # signs (see `attachChallenge` in schema/src/signing.rs) and returns through `attachment`.
  attach @0 (engine :Id.Identity) -> (challenge :Data, node :Id.Identity, attachment :Attachment);
  # A serialized P2PFrame that transport received from node `src` (authenticated by TLS),
  # over a connection made under the public network rules if `public`. Returns once its
  # messages are queued for delivery; a frame that fails verification is refused, and the
  # router asks transport to disconnect the peer.
  receiveFrame @1 (src :Id.Identity, frame :Data, public :Bool) -> ();
  # Signs this node's advert for the given addresses: the same advert while they do not
  # change, else a new one with a higher version. Called by transport when it has bound.
  signAdvert @2 (addrs :List(Id.WeightedAddress), protocols :List(Text)) -> (advert :Id.NodeAdvert);
}

interface Attachment {
  # `public`: messages from nodes connected under the public network rules may reach this engine.
  # `ring`: the engine asks for the shared-memory rings (engine/RING.md); `inbox` is still
  # needed, for the socket path when the ring is not granted.
  # `location`: the engine's signed record of attaching to this node (node = this node), which
  # the router announces to other nodes so that they route to it here.
  prove @0 (signature :Id.Signature, inbox :Inbox, public :Bool, ring :Bool, location :Id.EngineRecord)
      -> (session :EngineSession, limits :AttachLimits, ring :RingGrant);
}

# The shared-memory rings, when granted (engine/RING.md).
struct RingGrant {
  granted @0 :Bool;
  segment @1 :Text;          # the shared-memory object's name, e.g. /netmachine-<node>-<engine>
  doorbell @2 :Text;         # the router's doorbell
  capacity @3 :UInt32;       # bytes per ring
  reason @4 :Text;           # why not granted
}

struct AttachLimits {
  node @0 :Id.Identity;
  maxMessageBytes @1 :UInt32;
}

# The engine's side of an attachment: the router delivers messages here, in order.
interface Inbox {
  deliver @0 (message :Msg.EngineMessage) -> ();
  # Several messages in one call, in order: what the router does when more than one waits.
  deliverBatch @1 (messages :List(Msg.EngineMessage)) -> ();
}

enum SendRefusal {
  overLimit @0;              # the body is larger than the node's maximum message length
  expired @1;
  noRoute @2;
  badSource @3;              # src is not the attached engine
  queueFull @4;              # the destination stayed full for the whole wait
  malformed @5;
  unsupported @6;            # a destination kind this node does not route yet
}

struct SendResult {
  union {
    accepted @0 :Void;
    refused :group {
      reason @1 :SendRefusal;
      detail @2 :Text;
    }
  }
}

interface EngineSession {
  # Returns once the router has queued the message for its destination, or refused it.
  send @0 (message :Msg.EngineMessage) -> (result :SendResult);
  detach @1 () -> ();
  # Several messages in one call, routed in order; one result per message.
  sendBatch @2 (messages :List(Msg.EngineMessage)) -> (results :List(SendResult));
}
