//! What a service tells the service manager that started it (systemd's `sd_notify` protocol,
//! a no-op where `NOTIFY_SOCKET` is unset): `READY=1` once its socket is bound and its links to
//! the other services are up (or `READY_WAIT` after binding, with the missing links in
//! `STATUS=`, so that one service down does not keep the others from starting), `WATCHDOG=1`
//! from the service's own event loop at half the unit's `WatchdogSec=`, and `STOPPING=1`.

use sd_notify::NotifyState;
use std::time::Duration;

/// The longest a service waits for its links before it says it is ready anyway.
pub const READY_WAIT: Duration = Duration::from_secs(10);

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}

/// Ready to serve; `missing` names the links not up yet.
pub fn ready(missing: &[String]) {
    let status = match missing.is_empty() {
        true => "serving".to_string(),
        false => format!("serving; waiting for {}", missing.join(", ")),
    };
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Feeds the watchdog for as long as the returned future runs on the service's event loop:
/// if the loop stalls, the feeding stops and the service manager restarts the service.
pub async fn feed_watchdog() {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return std::future::pending().await;
    };
    let mut every = tokio::time::interval(timeout / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}
