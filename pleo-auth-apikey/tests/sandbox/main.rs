//! End-to-end tests of Integrated and Standalone API keys against the in-process Pleo sandbox,
//! over real loopback HTTP. Every secret the sandbox mints starts with `CANARY-`; every error,
//! `Debug` output and log line (TRACE, all targets) is checked for it.

mod common;
mod integrated;
mod standalone;
