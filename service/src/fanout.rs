//! Notifications pushed to subscribers (Cap'n Proto capabilities they handed over): bounded in
//! how many subscribe and in how many notifications each may leave unanswered; a subscriber
//! that fails or falls too far behind is dropped and counted. Dropping the subscription
//! capability it was given unsubscribes it.

use netmachine_schema::service_capnp::subscription;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::{Rc, Weak};

/// Notifications a subscriber may leave unanswered before it is dropped as too slow.
const MAX_UNANSWERED: u32 = 4096;

struct Subscriber<C> {
    client: C,
    unanswered: Rc<Cell<u32>>,
}

/// The subscribers to one kind of notification.
pub struct Fanout<C> {
    what: &'static str,
    max_subscribers: usize,
    subscribers: RefCell<BTreeMap<u64, Subscriber<C>>>,
    next: Cell<u64>,
    dropped: Cell<u64>,
}

impl<C: Clone + 'static> Fanout<C> {
    /// Subscribers to `what` (for logs), at most `max_subscribers` at once.
    pub fn new(what: &'static str, max_subscribers: usize) -> Rc<Self> {
        Rc::new(Fanout {
            what,
            max_subscribers,
            subscribers: RefCell::new(BTreeMap::new()),
            next: Cell::new(0),
            dropped: Cell::new(0),
        })
    }

    /// Adds `client`; the returned subscription removes it when dropped.
    pub fn subscribe(self: &Rc<Self>, client: C) -> capnp::Result<subscription::Client> {
        if self.subscribers.borrow().len() >= self.max_subscribers {
            return Err(capnp::Error::overloaded(format!(
                "{} already has {} subscribers",
                self.what, self.max_subscribers
            )));
        }
        let number = self.next.get();
        self.next.set(number + 1);
        self.subscribers.borrow_mut().insert(number, Subscriber { client, unanswered: Rc::new(Cell::new(0)) });
        Ok(capnp_rpc::new_client(Handle { fanout: Rc::downgrade(self), number }))
    }

    pub fn len(&self) -> usize {
        self.subscribers.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.borrow().is_empty()
    }

    /// Subscribers dropped for failing or falling behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Sends one notification to every subscriber: `call` makes the request for a client.
    pub fn notify<F, Fut>(self: &Rc<Self>, call: F)
    where
        F: Fn(&C) -> Fut,
        Fut: Future<Output = capnp::Result<()>> + 'static,
    {
        let subscribers: Vec<(u64, C, Rc<Cell<u32>>)> = self
            .subscribers
            .borrow()
            .iter()
            .map(|(n, s)| (*n, s.client.clone(), s.unanswered.clone()))
            .collect();
        for (number, client, unanswered) in subscribers {
            if unanswered.get() >= MAX_UNANSWERED {
                tracing::warn!(what = self.what, subscriber = number, "dropped a subscriber that stopped answering");
                self.remove(number);
                self.dropped.set(self.dropped.get() + 1);
                continue;
            }
            unanswered.set(unanswered.get() + 1);
            let answer = call(&client);
            let fanout = Rc::downgrade(self);
            tokio::task::spawn_local(async move {
                let outcome = answer.await;
                unanswered.set(unanswered.get().saturating_sub(1));
                if let (Err(error), Some(fanout)) = (outcome, fanout.upgrade()) {
                    tracing::info!(what = fanout.what, subscriber = number, %error, "subscriber gone");
                    fanout.remove(number);
                }
            });
        }
    }

    fn remove(&self, number: u64) {
        self.subscribers.borrow_mut().remove(&number);
    }
}

struct Handle<C> {
    fanout: Weak<Fanout<C>>,
    number: u64,
}

impl<C: 'static> subscription::Server for Handle<C> {}

impl<C> Drop for Handle<C> {
    fn drop(&mut self) {
        if let Some(fanout) = self.fanout.upgrade() {
            fanout.subscribers.borrow_mut().remove(&self.number);
        }
    }
}
