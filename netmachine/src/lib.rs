//! The `netmachine` command's library: each subcommand's implementation, and what the demo,
//! the benchmarks and the cross-process tests share (starting local nodes, talking to their
//! services).

pub mod bench;
pub mod blocks;
pub mod configuration;
pub mod demo;
pub mod events;
pub mod key;
pub mod latency;
pub mod local_node;
pub mod messaging;
pub mod node_client;
pub mod peers;
pub mod routable;
pub mod status;
pub mod topics;
pub mod up;

/// An error and its causes as one sentence: each cause once (a cause whose words the message
/// already holds is left out), without the "(os error N)" tails.
pub fn one_sentence(error: &anyhow::Error) -> String {
    let mut sentence = String::new();
    for cause in error.chain() {
        let text = match cause.downcast_ref::<capnp::Error>() {
            Some(rpc) => netmachine_service::rpc::reason(rpc),
            // Errors of the SDK carry a call's failure as text.
            None => cause.to_string().replace("Failed: remote exception: ", "").replace("remote exception: ", ""),
        };
        let text = netmachine_service::process::without_os_error_number(&text);
        if text.is_empty() || sentence.contains(&text) {
            continue;
        }
        if !sentence.is_empty() {
            sentence.push_str(": ");
        }
        sentence.push_str(&text);
    }
    sentence
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once_without_os_error_numbers() {
        let io = std::io::Error::from_raw_os_error(17);
        let error = anyhow::Error::new(io).context("key file bob.key: File exists (os error 17)");
        assert_eq!(super::one_sentence(&error), "key file bob.key: File exists");
        let error = anyhow::anyhow!("the router refused").context("sending to abc");
        assert_eq!(super::one_sentence(&error), "sending to abc: the router refused");
        let error = anyhow::Error::new(capnp::Error::failed("remote exception: no such topic".into())).context("publishing");
        assert_eq!(super::one_sentence(&error), "publishing: no such topic");
    }
}
