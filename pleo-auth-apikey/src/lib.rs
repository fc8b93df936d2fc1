#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod event;
mod format;
mod info;
mod integrated;
mod pleo;
mod standalone;

pub use config::ApiKeyConfig;
pub use error::{CoreError, Error, ErrorKind, Result};
pub use event::{ApiKeyEvent, ApiKeyEventSink};
pub use format::{
    MAX_API_KEY_LEN, MIN_API_KEY_LEN, MIN_LEN_TO_SHOW_SUFFIX, SHOWN_SUFFIX_LEN, masked,
    validate_key_format,
};
pub use info::KeyInfo;
pub use integrated::{
    ConnectOptions, Connected, DEFAULT_CACHE_TTL, IntegratedKeys, IntegratedKeysBuilder,
    REVALIDATION_MEMO,
};
pub use standalone::{DEFAULT_ENV_VAR, StandaloneKey};
