//! Waiting until an engine on another node is routable. Nodes announce their engines to each
//! other after they connect, so a fresh engine is unknown elsewhere for a moment. A probe
//! request the destination answers proves the route both ways; a refusal (the destination not
//! yet announced) fails the request at once, and the probe is tried again.

use anyhow::{bail, Result};
use netmachine_engine::Engine;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The protocol name of the probes, so that receivers can tell them from real messages.
pub const PROBE: &str = "netmachine/route-probe";

/// Returns once `from` can reach `to` (and `to` can answer), or fails after 15 s. Meanwhile
/// `to` answers probes and drops them; nothing else should be sent to it.
pub async fn wait_until_routable(from: &Engine, to: &Arc<Engine>) -> Result<()> {
    let answering = to.clone();
    let answer_probes = tokio::task::spawn_local(async move {
        while let Some(message) = answering.recv().await {
            if message.protocol == PROBE && message.reply_to.is_none() {
                let _ = answering.reply(&message, Vec::new()).await;
            }
        }
    });
    let start = Instant::now();
    let routable = loop {
        let mut probe = from.message(to.identity(), Vec::new());
        probe.protocol = PROBE.into();
        if from.request_message(probe, Duration::from_millis(300)).await.is_ok() {
            break true;
        }
        if start.elapsed() > Duration::from_secs(15) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    answer_probes.abort();
    if !routable {
        bail!("engine {} did not become routable within 15 s", to.identity());
    }
    Ok(())
}
