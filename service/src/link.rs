//! A link from one service to another: connects, and whenever the connection is lost or cannot
//! be made, retries with capped backoff, forever. Callers ask it for the current client.

use crate::Backoff;
use crate::home::ServiceKind;
use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::watch;

/// A reconnecting link to the service `kind`, holding a client of interface `C`.
pub struct Link<C> {
    kind: ServiceKind,
    client: Rc<RefCell<Option<C>>>,
    connected: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl<C: capnp::capability::FromClientHook + Clone + 'static> Link<C> {
    /// Starts linking to `kind` at `path`. After each connect, `on_connect` runs with the fresh
    /// client (to subscribe to notifications, say); if it fails, the connection is dropped and
    /// retried. Must run inside a `LocalSet`.
    pub fn start<F, Fut>(kind: ServiceKind, path: PathBuf, word_limit: usize, on_connect: F) -> Self
    where
        F: Fn(C) -> Fut + 'static,
        Fut: Future<Output = Result<(), capnp::Error>>,
    {
        let client = Rc::new(RefCell::new(None));
        let (connected_tx, connected) = watch::channel(false);
        let slot = client.clone();
        let task = tokio::task::spawn_local(async move {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
            loop {
                match crate::rpc::connect::<C>(&path, word_limit).await {
                    Ok((fresh, driver)) => match on_connect(fresh.clone()).await {
                        Ok(()) => {
                            tracing::info!(service = kind.name(), "linked");
                            backoff.reset();
                            *slot.borrow_mut() = Some(fresh);
                            let _ = connected_tx.send(true);
                            let outcome = driver.await;
                            *slot.borrow_mut() = None;
                            let _ = connected_tx.send(false);
                            match outcome {
                                // The service closed the connection: it stopped or restarts.
                                Ok(Ok(())) => tracing::info!(service = kind.name(), "link closed by the service; reconnecting"),
                                Ok(Err(error)) => tracing::warn!(service = kind.name(), %error, "link lost; reconnecting"),
                                Err(error) => tracing::warn!(service = kind.name(), %error, "link driver failed; reconnecting"),
                            }
                        }
                        Err(error) => {
                            driver.abort();
                            tracing::warn!(service = kind.name(), %error, "link set-up failed");
                        }
                    },
                    Err(error) => {
                        tracing::debug!(service = kind.name(), %error, "cannot connect yet");
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        });
        Link { kind, client, connected, task }
    }

    /// The client while the link is up.
    pub fn client(&self) -> Option<C> {
        self.client.borrow().clone()
    }

    /// The client, waiting up to `wait` for the link to come up.
    pub async fn client_within(&self, wait: Duration) -> Option<C> {
        let mut connected = self.connected.clone();
        let _ = tokio::time::timeout(wait, connected.wait_for(|up| *up)).await;
        self.client()
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// For status reports: the service linked to and whether the link is up.
    pub fn state(&self) -> (&'static str, bool) {
        (self.kind.name(), self.is_connected())
    }
}

impl<C> Drop for Link<C> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
