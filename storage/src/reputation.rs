//! How fetches went with each node: a cut lowers its score (by 10 for bytes that did not check
//! out, by 1 for a stall or a failure), each block it helped complete raises it by 1, and peers
//! are asked best first. The nodes cut show in `status`. At most `KEPT` nodes are remembered:
//! past that, the one nearest neutral is forgotten, so nodes that come and go never grow it.
//! The scores are written to `$DATA/storage/reputation` after each change, so a node that sent
//! bad bytes is still asked last after the service restarts.

use crate::core::fetch::CutReason;
use netmachine_schema::Identity;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Nodes remembered at most.
pub const KEPT: usize = 1024;
/// Cut nodes named in `status` at most (the worst first).
const NAMED: usize = 8;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Score {
    value: i64,
    cuts: u64,
    last_cut: Option<String>,
}

#[derive(Debug, Default)]
pub struct Reputation {
    scores: BTreeMap<Identity, Score>,
    /// Where the scores are kept; `None`: in memory only.
    file: Option<PathBuf>,
}

impl Reputation {
    /// The scores kept in `file` (none if it does not exist yet). A line that does not read as
    /// `<node> <score> <cuts> <last cut>` is skipped with a warning.
    pub fn load(file: PathBuf) -> Reputation {
        let mut scores = BTreeMap::new();
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            match parse_line(line) {
                Some((node, score)) => {
                    scores.insert(node, score);
                }
                None => tracing::warn!(file = %file.display(), line = n + 1, "reputation line skipped: not `<node> <score> <cuts> <last cut>`"),
            }
        }
        Reputation { scores, file: Some(file) }
    }

    /// Writes the scores to the file, whole (written aside, then renamed into place).
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let text: String = self
            .scores
            .iter()
            .map(|(node, score)| format!("{node} {} {} {}\n", score.value, score.cuts, score.last_cut.as_deref().unwrap_or("-")))
            .collect();
        let aside = file.with_extension("partial");
        if let Err(error) = std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, file)) {
            tracing::warn!(file = %file.display(), %error, "cannot keep the reputation of other nodes");
        }
    }

    /// `node`'s score (0 for a node not met).
    pub fn of(&self, node: &Identity) -> i64 {
        self.scores.get(node).map_or(0, |score| score.value)
    }

    /// `node` was cut from a fetch.
    pub fn cut(&mut self, node: Identity, reason: &CutReason) {
        let (lowered, why) = match reason {
            CutReason::Corrupt(corrupt) => (10, format!("bad bytes at offset {}", corrupt.offset)),
            CutReason::Unresponsive(strikes) => (1, format!("{strikes} requests failed or stalled")),
        };
        let score = self.entry(node);
        score.value -= lowered;
        score.cuts += 1;
        score.last_cut = Some(why);
        self.save();
    }

    /// `node` gave checked bytes of a block that completed.
    pub fn gave(&mut self, node: Identity) {
        self.entry(node).value += 1;
        self.save();
    }

    fn entry(&mut self, node: Identity) -> &mut Score {
        if !self.scores.contains_key(&node) && self.scores.len() >= KEPT {
            let neutral = self.scores.iter().min_by_key(|(_, score)| score.value.abs()).map(|(node, _)| *node);
            if let Some(neutral) = neutral {
                self.scores.remove(&neutral);
            }
        }
        self.scores.entry(node).or_default()
    }

    /// The nodes cut from fetches, worst first, for `status` (empty if none).
    pub fn note(&self) -> String {
        let mut cut: Vec<(&Identity, &Score)> = self.scores.iter().filter(|(_, score)| score.cuts > 0).collect();
        if cut.is_empty() {
            return String::new();
        }
        cut.sort_by_key(|(_, score)| score.value);
        let named: Vec<String> = cut
            .iter()
            .take(NAMED)
            .map(|(node, score)| format!("{node} (cut {} times, last for {}; score {})", score.cuts, score.last_cut.as_deref().unwrap_or("?"), score.value))
            .collect();
        let more = cut.len().saturating_sub(NAMED);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("peers cut from fetches: {}{more}", named.join(", "))
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// One saved line: the node, then its score, cuts and last cut (`-` for none).
fn parse_line(line: &str) -> Option<(Identity, Score)> {
    let mut words = line.splitn(4, ' ');
    let node: Identity = words.next()?.parse().ok()?;
    let value = words.next()?.parse().ok()?;
    let cuts = words.next()?.parse().ok()?;
    let last_cut = Some(words.next()?.to_string()).filter(|cut| cut != "-");
    Some((node, Score { value, cuts, last_cut }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::verify::Corrupt;
    use netmachine_schema::{ContentId, Keypair};

    #[test]
    fn cuts_lower_blocks_given_raise_and_the_cut_show_worst_first() {
        let mut reputation = Reputation::default();
        let (liar, slow, good) = (Keypair::generate().identity(), Keypair::generate().identity(), Keypair::generate().identity());
        assert_eq!(reputation.note(), "");
        reputation.cut(liar, &CutReason::Corrupt(Corrupt { id: ContentId::of(b"x"), offset: 16_384 }));
        reputation.cut(slow, &CutReason::Unresponsive(2));
        reputation.gave(good);
        assert_eq!((reputation.of(&liar), reputation.of(&slow), reputation.of(&good)), (-10, -1, 1));
        let note = reputation.note();
        assert_eq!(note, format!("peers cut from fetches: {liar} (cut 1 times, last for bad bytes at offset 16384; score -10), {slow} (cut 1 times, last for 2 requests failed or stalled; score -1)"));
    }

    #[test]
    fn the_scores_outlive_the_service() {
        let file = std::env::temp_dir().join(format!("nm-reputation-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let (liar, good) = (Keypair::generate().identity(), Keypair::generate().identity());
        let mut reputation = Reputation::load(file.clone());
        reputation.cut(liar, &CutReason::Corrupt(Corrupt { id: ContentId::of(b"x"), offset: 16_384 }));
        reputation.gave(good);
        let note = reputation.note();
        drop(reputation);
        std::fs::write(&file, std::fs::read_to_string(&file).unwrap() + "not a line\n").unwrap();
        let again = Reputation::load(file.clone());
        assert_eq!((again.of(&liar), again.of(&good), again.len()), (-10, 1, 2));
        assert_eq!(again.note(), note);
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn past_the_bound_the_node_nearest_neutral_is_forgotten() {
        let mut reputation = Reputation::default();
        let liar = Keypair::generate().identity();
        reputation.cut(liar, &CutReason::Corrupt(Corrupt { id: ContentId::of(b"x"), offset: 0 }));
        for _ in 0..KEPT + 10 {
            reputation.gave(Keypair::generate().identity());
        }
        assert_eq!(reputation.len(), KEPT);
        assert_eq!(reputation.of(&liar), -10, "the node cut for bad bytes is not the one forgotten");
    }
}
