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
  # The topics this node holds, for operators (`netmachine topics`).
  topics @3 () -> (topics :List(TopicInfo));
}

# What a topic does when an event finds a subscriber with no room (SPEC.md "PubSub").
enum TopicPolicy {
  block @0;                  # the event waits: the slowest subscriber sets the publisher's pace
  cutSlow @1;                # the slow subscriber misses the event, and sees a gap in the sequence
}

enum TopicRefusal {
  exists @0;                 # create: the topic is already on this node
  unknown @1;                # the topic is not on this node (and cannot be subscribed remotely)
  denied @2;                 # delete by an engine that did not create it
  badAdvert @3;              # the advert is not signed by the topic key, or names no publisher
  notSubscribed @4;          # unsubscribe from a topic this engine does not subscribe to
}

struct TopicResult {
  union {
    done :group {
      lastSeq @0 :UInt64;    # the sequence of the topic's last event (0: none yet)
      policy @3 :TopicPolicy; # subscribe to a topic here: what its events do when a subscriber has no room
      replay @4 :List(Msg.EngineMessage);  # subscribe from a sequence to a topic here that the
                              # router keeps for the pubsub service: its kept events from there
    }
    refused :group {
      reason @1 :TopicRefusal;
      detail @2 :Text;
    }
  }
}

struct TopicInfo {
  advert @0 :Id.TopicAdvert;
  creator @1 :Id.Identity;
  scope @2 :Msg.Scope;
  policy @3 :TopicPolicy;
  lastSeq @4 :UInt64;
  subscribers @5 :List(Id.Identity);
  slow @6 :List(Id.Identity);        # subscribers with no room now
  eventsCut @7 :UInt64;              # deliveries skipped for slow subscribers (policy cutSlow)
}

interface Attachment {
  # `public`: messages from nodes connected under the public network rules may reach this engine.
  # `ring`: the engine asks for the shared-memory rings (ring/RING.md); `inbox` is still
  # needed, for the socket path when the ring is not granted.
  # `location`: the engine's signed record of attaching to this node (node = this node), which
  # the router announces to other nodes so that they route to it here.
  prove @0 (signature :Id.Signature, inbox :Inbox, public :Bool, ring :Bool, location :Id.EngineRecord)
      -> (session :EngineSession, limits :AttachLimits, ring :RingGrant);
}

# The shared-memory rings, when granted (ring/RING.md).
struct RingGrant {
  granted @0 :Bool;
  segment @1 :Text;          # the segment's name, e.g. /netmachine-<node>-<engine> (ring/RING.md)
  doorbell @2 :Text;         # the router's doorbell's name
  capacity @3 :UInt32;       # bytes per ring
  reason @4 :Text;           # why not granted
  ticket @5 :Data;           # presented on the handoff socket to take the rings (ring/RING.md)
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
  # The router detached this engine, and says why (its ring was corrupt, say): nothing more is
  # delivered, and what it sends is refused. Told once, as the last call.
  detached @2 (reason :Text) -> ();
}

enum SendRefusal {
  overLimit @0;              # the body is larger than the node's maximum message length
  expired @1;
  noRoute @2;
  badSource @3;              # src is not the attached engine
  queueFull @4;              # the destination stayed full for the whole wait
  malformed @5;
  unsupported @6;            # a destination kind this node does not route yet
  denied @7;                 # an event on a topic from an engine that is not its publisher
  backPressured @8;          # trySend: the destination has no room now (`slowest` names who)
  badSignature @9;           # the message carries a signature that is not src's over it
}

struct SendResult {
  union {
    accepted @0 :Void;
    refused :group {
      reason @1 :SendRefusal;
      detail @2 :Text;
      slowest @3 :Id.Identity;   # backPressured: the engine that has no room (empty otherwise)
    }
  }
}

interface EngineSession {
  # Returns once the router has queued the message for its destination, or refused it.
  send @0 (message :Msg.EngineMessage) -> (result :SendResult);
  detach @1 () -> ();
  # Several messages in one call, routed in order; one result per message.
  sendBatch @2 (messages :List(Msg.EngineMessage)) -> (results :List(SendResult));
  # As `send`, but never waits for room: refused as backPressured at once if there is none.
  trySend @3 (message :Msg.EngineMessage) -> (result :SendResult);
  # Topics (SPEC.md "Router"). An event is a message to Destination.topic whose id is its
  # sequence: each event's is higher than the last one's. Only the advert's publisher may send
  # events; only the creator may delete the topic. Subscribers receive events as messages.
  # `after`: for the pubsub service's mirror of a topic on another node, the sequence of the last
  # event before its subscription began (a restarted service resumes after it); 0 otherwise.
  createTopic @4 (advert :Id.TopicAdvert, scope :Msg.Scope, policy :TopicPolicy, after :UInt64) -> (result :TopicResult);
  deleteTopic @5 (topic :Id.Identity) -> (result :TopicResult);
  # `from`: the sequence the engine expects next, when it subscribes again (0: the next); for a
  # topic on another node, the pubsub service subscribes from there, repairing what was missed.
  subscribe @6 (topic :Id.Identity, scope :Msg.Scope, from :UInt64) -> (result :TopicResult);
  unsubscribe @7 (topic :Id.Identity) -> (result :TopicResult);
  # Where the topic's sequence stands: a publisher continues after `lastSeq`.
  lastSeq @8 (topic :Id.Identity) -> (result :TopicResult);
  # The engine serves `protocol` for the node: messages to the node in that protocol go to it
  # (the pubsub service serves "netmachine/pubsub/1"). Answered as a topic request: done, or
  # refused as denied (another engine serves it) with the reason. Ends when the engine detaches.
  serve @9 (protocol :Text) -> (result :TopicResult);
}
