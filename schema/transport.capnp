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

interface Transport extends(Svc.Service) {
  send @0 (frame :Msg.P2PFrame, expiry :Id.Time) -> ();
  connect @1 (node :Id.Identity) -> ();
  disconnect @2 (node :Id.Identity) -> ();
  connectedNodes @3 () -> (nodes :List(Id.Identity));
  addPeer @4 (advert :Id.NodeAdvert) -> ();
  removePeer @5 (node :Id.Identity) -> ();
  events @6 (sink :TransportEvents) -> (subscription :Svc.Subscription);
}
