//! `MemoryStore`: an in-process [`SecretStore`] for tests and single-process tools.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::key::StoreKey;
use crate::lease::Sharing;
use crate::secret::SecretBytes;
use crate::store::{Precondition, SecretStore, Version, Versioned, check_precondition};

/// A [`SecretStore`] in memory. Versions are a counter shared by all keys, so a key deleted and
/// written again never reuses an old version.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_version: u64,
    entries: BTreeMap<StoreKey, (SecretBytes, u64)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SecretStore for MemoryStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        let inner = self.inner.lock().expect("memory store lock");
        Ok(inner.entries.get(key).map(|(value, version)| Versioned {
            value: value.clone(),
            version: Version::from_u64(*version),
        }))
    }

    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let mut inner = self.inner.lock().expect("memory store lock");
        let current = inner.entries.get(key).map(|(_, v)| Version::from_u64(*v));
        check_precondition(current.as_ref(), &precondition, "memory")?;
        inner.next_version += 1;
        let version = inner.next_version;
        inner.entries.insert(key.clone(), (value, version));
        Ok(Version::from_u64(version))
    }

    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        if precondition == Precondition::Absent {
            return Err(
                Error::invalid_input("delete cannot require absence").with_backend("memory")
            );
        }
        let mut inner = self.inner.lock().expect("memory store lock");
        let current = inner.entries.get(key).map(|(_, v)| Version::from_u64(*v));
        check_precondition(current.as_ref(), &precondition, "memory")?;
        inner.entries.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        let inner = self.inner.lock().expect("memory store lock");
        Ok(inner
            .entries
            .range(prefix.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.as_str().starts_with(prefix.as_str()))
            .filter(|k| k.starts_with(prefix) && *k != prefix)
            .cloned()
            .collect())
    }

    fn sharing(&self) -> Sharing {
        Sharing::ProcessLocal
    }
}
