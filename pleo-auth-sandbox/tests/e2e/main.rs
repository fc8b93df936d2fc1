//! End-to-end tests: a plain reqwest client drives a real sandbox over loopback.

mod api;
mod faults;
mod oauth;
mod shape;
