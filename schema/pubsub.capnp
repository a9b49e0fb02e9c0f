# The pub/sub service's interface: the inter-node side of topics (SPEC.md "PubSub").
@0xa1f887884cd15fdc;

using Id = import "identity.capnp";
using Msg = import "message.capnp";
using Svc = import "service.capnp";

struct PubSubNotice {
  topic @0 :Id.Identity;
  union {
    subscribed @1 :Void;
    unsubscribed @2 :Void;
    advertReceived @3 :Id.TopicAdvert;
  }
}

interface PubSubEvents {
  notice @0 (notice :PubSubNotice) -> ();
}

interface PubSub extends(Svc.Service) {
  subscribe @0 (topic :Id.Identity, scope :Msg.Scope) -> ();
  unsubscribe @1 (topic :Id.Identity) -> ();
  advertise @2 (advert :Id.TopicAdvert) -> ();
  publish @3 (event :Msg.Event) -> ();
  events @4 (sink :PubSubEvents) -> (subscription :Svc.Subscription);
}
