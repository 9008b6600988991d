//! Operations, one module per family. Each validates its inputs on the host,
//! plans its dispatches (see [`plan`]) and records them.

pub mod forward;
pub(crate) mod plan;
