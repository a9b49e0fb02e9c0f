//! The identity store's decisions, without I/O: the records it holds (`records`) and the checks
//! an update must pass (`check`). The service (`server`, `db`) persists and serves them.

pub mod check;
pub mod records;

pub use check::Refusal;
pub use records::{Change, Records};
