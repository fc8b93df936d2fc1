//! One grant's life in this process: its pure state machine ([`phase`]), its cell in the token
//! cache ([`cell`]), what it can answer without I/O ([`view`]), the refresh flight ([`flight`])
//! with its lease ([`lease`]), the writes of what it holds ([`persist`]), and disconnecting
//! ([`disconnect`]). Files depend downward only, in that order: `phase` < `cell` < `view` <
//! `lease` < `persist` < `flight` < `disconnect`.

pub(crate) mod cell;
pub(crate) mod disconnect;
pub(crate) mod flight;
pub(crate) mod lease;
pub(crate) mod persist;
pub(crate) mod phase;
pub(crate) mod view;

#[cfg(test)]
mod tests;
