# The pub/sub service: the inter-node side of topics (SPEC.md "PubSub").
@0xa1f887884cd15fdc;

using Id = import "identity.capnp";
using Msg = import "message.capnp";
using Svc = import "service.capnp";
using Router = import "router.capnp";

# Engines make topic requests of their router; the pubsub service is an engine itself, and
# carries topics between nodes in PeerMessages. Its own interface is its status and its
# notifications (SPEC.md: TopicAdvertReceived, TopicSubscribed, TopicUnsubscribed).
interface PubSub extends(Svc.Service) {
  events @0 (sink :PubSubEvents) -> (subscription :Svc.Subscription);
}

interface PubSubEvents {
  event @0 (event :PubSubEvent) -> ();
}

# Something that happened to a topic between this node and another.
struct PubSubEvent {
  topic @0 :Id.Identity;
  union {
    advertReceived :group {    # another node announced the topic; its advert verified and stored
      node @1 :Id.Identity;    # the node that holds the topic
      publisher @2 :Id.Identity;
    }
    subscribed :group {        # this node now receives the topic from the publisher's node
      node @3 :Id.Identity;
      peer @4 :Id.Identity;    # that node's pubsub service
    }
    unsubscribed @5 :Text;     # this node no longer receives the topic: why
    readerAdded @6 :Id.Identity;   # another node's pubsub service now reads the topic from here
    readerLeft :group {        # a reader no longer reads it
      reader @7 :Id.Identity;
      reason @8 :Text;
    }
    readerFull @9 :Id.Identity;    # a reader's window is full: under policy Block it holds the
                                   # publisher back; else it falls behind and repairs from history
  }
}

# What one node's pubsub service says to another's, and what a router tells its own pubsub
# service: the body of an EngineMessage with protocol "netmachine/pubsub/1". The event id is
# (publisher, seq): the seq is the carried message's id.
struct PeerMessage {
  topic @0 :Id.Identity;
  union {
    subscribe @1 :UInt64;      # subscriber to publisher node: send events from this seq on (0: from the next)
    subscribed :group {        # the answer
      lastSeq @2 :UInt64;      # the seq of the topic's last event
      policy @16 :Router.TopicPolicy;  # the topic's policy, which its mirrors take
    }
    refused :group {
      reason @3 :PeerRefusal;
      detail @4 :Text;
    }
    unsubscribe @5 :Void;
    unsubscribed @6 :Void;
    event @7 :Msg.EngineMessage;  # the publisher's message to the topic, signed by the publisher
    ack @8 :UInt64;            # every event up to this seq is in the subscriber node's queue
    resend :group {            # events lost on the way: send them again
      from @9 :UInt64;
      to @15 :UInt64;
    }
    missing :group {           # events no longer in the publisher's history
      from @10 :UInt64;
      to @11 :UInt64;
    }
    heartbeat @12 :UInt64;     # an idle publisher's last seq, so a lost tail is found
    want @13 :UInt64;          # router to its pubsub: engines here subscribe (from this seq; 0: the next)
    unwant @14 :Void;          # router to its pubsub: no engine here subscribes any more
  }
}

enum PeerRefusal {
  unknown @0;                  # the topic is not on the publisher's node
  denied @1;                   # the topic's scope keeps it to its node
  notSubscribed @2;            # an ack, resend or unsubscribe from a node that does not subscribe
}

# Several PeerMessages from one service's engine to another's, in order: the body of an
# EngineMessage with protocol "netmachine/pubsub-batch/1" (engine to engine only; a first
# contact to a node is a single PeerMessage).
struct PeerBatch {
  messages @0 :List(PeerMessage);
}
