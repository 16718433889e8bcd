//! A bounded cache of verified tokens, so a token's signature is checked once, not on every request.
//!
//! Keys are keyed 128-bit hashes of the token ([`crate::token::shared::CacheKeyer`]; the token itself is
//! never kept). An entry is used only
//! until the token's `exp` and is dropped after (a token inside the clock skew past `exp` is simply
//! verified again); everything else that depends on time or configuration (age limits, revocation)
//! is checked on every hit.

use std::collections::HashMap;
use std::rc::Rc;

use crate::token::VerifiedToken;

/// What the cache reports, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Verified tokens by digest, at most `capacity` of them.
pub struct TokenCache {
    entries: HashMap<[u8; 16], Entry>,
    capacity: usize,
    stats: CacheStats,
}

struct Entry {
    token: Rc<VerifiedToken>,
    /// The generation of the issuer's key set the token was verified with.
    generation: u64,
    /// Last second (inclusive) at which the entry may be used: the token's `exp`.
    usable_until: u64,
}

/// The cache key of a token.
pub type Key = [u8; 16];

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        TokenCache { entries: HashMap::new(), capacity, stats: CacheStats::default() }
    }

    /// The verified token for this digest, if cached and still usable at `now`, with the key-set
    /// generation it was verified with.
    #[cfg_attr(feature = "measure", inline(never))]
    pub fn get(&mut self, key: &Key, now: u64) -> Option<(Rc<VerifiedToken>, u64)> {
        match self.entries.get(key) {
            Some(entry) if now <= entry.usable_until => {
                self.stats.hits += 1;
                Some((entry.token.clone(), entry.generation))
            }
            Some(_) => {
                self.entries.remove(key);
                self.stats.evictions += 1;
                self.stats.misses += 1;
                None
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Remembers a verified token until `usable_until`.
    pub fn insert(
        &mut self,
        key: Key,
        token: Rc<VerifiedToken>,
        generation: u64,
        usable_until: u64,
        now: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        self.entries.insert(key, Entry { token, generation, usable_until });
    }

    /// Drops expired entries; if the cache is still full, drops an arbitrary eighth of it, so the
    /// cost of a full cache is paid once per many insertions rather than on each.
    fn make_room(&mut self, now: u64) {
        let before = self.entries.len();
        self.entries.retain(|_, e| now <= e.usable_until);
        if self.entries.len() >= self.capacity {
            let excess = (self.capacity / 8).max(1);
            let victims: Vec<Key> = self.entries.keys().take(excess).copied().collect();
            for key in victims {
                self.entries.remove(&key);
            }
        }
        self.stats.evictions += (before - self.entries.len()) as u64;
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hit, miss and eviction counts since creation.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(token: &str) -> Key {
        crate::token::shared::CacheKeyer::from_bytes([7; 16]).key(token)
    }

    fn token(sub: &str, exp: u64) -> Rc<VerifiedToken> {
        Rc::new(VerifiedToken {
            issuer_name: "i".into(),
            issuer: "https://i".into(),
            subject: sub.into(),
            token_id: None,
            expires_at: Some(exp),
            profile: "oidc",
            issued_at: None,
            claims: Default::default(),
        })
    }

    #[test]
    fn entries_are_not_used_after_they_expire() {
        let mut cache = TokenCache::new(10);
        let key = digest("t1");
        cache.insert(key, token("a", 100), 0, 130, 50);
        assert_eq!(cache.get(&key, 130).unwrap().0.subject, "a");
        assert!(cache.get(&key, 131).is_none());
        assert!(cache.is_empty(), "an expired entry is dropped when seen");
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 1, evictions: 1 });
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let mut cache = TokenCache::new(16);
        for i in 0..1000u64 {
            cache.insert(digest(&i.to_string()), token("a", 10_000), 0, 10_000, 0);
            assert!(cache.len() <= 16);
        }
        // Expired entries are the first to go.
        let mut cache = TokenCache::new(2);
        cache.insert(digest("old"), token("old", 10), 0, 10, 0);
        cache.insert(digest("live"), token("live", 1000), 0, 1000, 0);
        cache.insert(digest("new"), token("new", 1000), 0, 1000, 20);
        assert!(cache.get(&digest("live"), 20).is_some());
        assert!(cache.get(&digest("new"), 20).is_some());
        assert!(cache.get(&digest("old"), 5).is_none());
    }

    #[test]
    fn capacity_zero_disables_caching() {
        let mut cache = TokenCache::new(0);
        cache.insert(digest("t"), token("a", 100), 0, 100, 0);
        assert!(cache.get(&digest("t"), 0).is_none());
    }
}
