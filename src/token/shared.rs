//! Verified tokens shared by the VMs of one Envoy, so a token is verified once per process rather
//! than once per worker (performance.md target 3).
//!
//! Envoy runs one wasm VM per worker thread, each with its own [`crate::token::cache::TokenCache`]. The
//! proxy-wasm host offers a process-wide key-value store ("shared data") visible to every VM with
//! the same `vm_id`; this module keeps verified tokens there, behind the small [`SharedStore`]
//! trait so that all of its logic runs (and is tested) natively. Only `src/filter/` talks to the
//! host.
//!
//! A shared entry is never trusted more than a local one. A VM that finds a token in shared data
//! re-checks, before using it, everything the local cache re-checks on a hit (see
//! [`SharedTokens::get`]), and then everything checked on every request (revocation, certificate
//! binding, policy) runs as for any request. What a shared hit skips is exactly what a local hit
//! skips: the signature check and the claim checks made at verification, which depend only on the
//! token, the bundle and the issuer's key set (all three pinned by the entry's key and
//! namespace, and by the key set's fingerprint), and on the clock only through `nbf`/`iat`, which
//! only become easier to meet as time passes on the one clock the VMs of a process share.
//!
//! Keys: `meshward/<bundle policy digest>/...`, so two bundles (or two plugins with different bundles in
//! one `vm_id`) never read each other's entries. Entries live in a fixed number of slots (a slot
//! is overwritten by the next token hashing to it), each at most [`MAX_ENTRY_BYTES`]: the store of
//! one bundle is bounded by `slots * MAX_ENTRY_BYTES`.

use serde::{Deserialize, Serialize};

use crate::token::{Issuers, VerifiedToken};

/// The process-wide key-value store of the proxy-wasm host (shared data), as the core needs it.
pub trait SharedStore {
    /// The value stored under `key`, if any, with its compare-and-swap version.
    fn get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value` under `key` if its version is still `version` (any version: `None`); whether
    /// it was stored. A key that does not exist yet is always stored (proxy-wasm's semantics).
    fn set_versioned(&self, key: &str, value: &[u8], version: Option<u32>) -> bool;

    /// The value stored under `key`, if any.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.get_versioned(key).0
    }
    /// Stores `value` under `key` (best effort: a refused write only costs a verification).
    fn set(&self, key: &str, value: &[u8]) {
        self.set_versioned(key, value, None);
    }
}

/// The largest serialized entry shared; a token with more claims stays in the local cache only.
pub const MAX_ENTRY_BYTES: usize = 4096;
/// The most slots one bundle uses in shared data.
pub const MAX_SLOTS: u64 = 4096;

/// The cache key of a token: SipHash-2-4 with a 128-bit output under a secret random key. Keyed,
/// so that nobody who does not know the key can make two tokens collide (an unkeyed fast hash
/// would let a caller forge a token whose key equals a victim's); 128 bits, so that accidental
/// collisions do not happen either. About a tenth of the cost of SHA-256 on a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheKeyer {
    k0: u64,
    k1: u64,
}

impl CacheKeyer {
    /// A keyer with a fresh random key (from the host's or OS's random source).
    pub fn random() -> Result<Self, String> {
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).map_err(|e| format!("no random source: {e}"))?;
        Ok(Self::from_bytes(key))
    }

    /// A keyer from a 16-byte key.
    pub fn from_bytes(key: [u8; 16]) -> Self {
        let (a, b) = key.split_at(8);
        let word = |s: &[u8]| s.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        CacheKeyer { k0: word(a), k1: word(b) }
    }

    /// The key as bytes (to share it).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.k0.to_le_bytes());
        out[8..].copy_from_slice(&self.k1.to_le_bytes());
        out
    }

    /// The keyed 128-bit hash of a token.
    #[cfg_attr(feature = "measure", inline(never))]
    pub fn key(&self, token: &str) -> [u8; 16] {
        siphash24_128(self.k0, self.k1, token.as_bytes())
    }
}

/// SipHash-2-4 with 128-bit output (Aumasson and Bernstein, the reference `siphash.c`).
fn siphash24_128(k0: u64, k1: u64, data: &[u8]) -> [u8; 16] {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    // Fixed-size words: a copy of a slice whose length is only known at run time compiles to
    // `memory.copy`, which V8 runs as a call into Envoy (about 85 instructions for each word).
    let (words, rest) = data.as_chunks::<8>();
    for word in words {
        let m = u64::from_le_bytes(*word);
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let tail = rest.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let last = ((data.len() as u64) << 56) | tail;
    v[3] ^= last;
    round(&mut v);
    round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xee;
    for _ in 0..4 {
        round(&mut v);
    }
    let first = v[0] ^ v[1] ^ v[2] ^ v[3];
    v[1] ^= 0xdd;
    for _ in 0..4 {
        round(&mut v);
    }
    let second = v[0] ^ v[1] ^ v[2] ^ v[3];
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&first.to_le_bytes());
    out[8..].copy_from_slice(&second.to_le_bytes());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A verified token as stored in shared data.
#[derive(Serialize, Deserialize)]
struct Entry {
    /// The full cache key (hex): a slot holds whichever token hashed to it last.
    key: String,
    /// The fingerprint (hex) of the issuer's key set the token was verified with.
    keys: String,
    /// Last second at which the entry may be used (the token's `exp`).
    until: u64,
    issuer_name: String,
    issuer: String,
    subject: String,
    token_id: Option<String>,
    expires_at: Option<u64>,
    issued_at: Option<u64>,
    claims: crate::token::claims::Claims,
}

/// Verified tokens in the host's shared data, for one bundle.
pub struct SharedTokens {
    store: Box<dyn SharedStore>,
    /// `meshward/<bundle policy digest>/`.
    namespace: String,
    slots: u64,
}

impl SharedTokens {
    /// Shares tokens of the bundle with this SHA-256 (hex) in `store`, in at most `slots` slots
    /// (bounded by [`MAX_SLOTS`]; 0 disables sharing).
    pub fn new(store: Box<dyn SharedStore>, bundle_sha256: &str, slots: usize) -> Self {
        SharedTokens {
            store,
            namespace: format!("meshward/{bundle_sha256}/"),
            slots: (slots as u64).min(MAX_SLOTS),
        }
    }

    /// The cache keyer all VMs of this bundle share: the one already in shared data, or `fresh`,
    /// stored for the others. Proxy-wasm's compare-and-swap cannot create a key only if absent, so
    /// two VMs configuring at the same instant may each store their own; the value read back after
    /// writing is the one kept, and a VM left with another key only misses the others' entries
    /// (each entry carries its full key), which costs verifications, never correctness.
    pub fn keyer(&self, fresh: CacheKeyer) -> CacheKeyer {
        let name = format!("{}cache-key", self.namespace);
        let read = |store: &dyn SharedStore| {
            store.get(&name).and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok()).map(CacheKeyer::from_bytes)
        };
        if let Some(shared) = read(self.store.as_ref()) {
            return shared;
        }
        self.store.set(&name, &fresh.to_bytes());
        read(self.store.as_ref()).unwrap_or(fresh)
    }

    fn slot_name(&self, key: &[u8; 16]) -> Option<String> {
        if self.slots == 0 {
            return None;
        }
        let slot = u64::from_le_bytes(<[u8; 8]>::try_from(&key[..8]).ok()?) % self.slots;
        Some(format!("{}token/{slot}", self.namespace))
    }

    /// Shares a token this VM verified (with the issuer's key set of fingerprint `keys`), usable
    /// until `until`.
    pub fn put(&self, key: &[u8; 16], token: &VerifiedToken, keys: &[u8; 32], until: u64) {
        let Some(name) = self.slot_name(key) else { return };
        let entry = Entry {
            key: hex(key),
            keys: hex(keys),
            until,
            issuer_name: token.issuer_name.clone(),
            issuer: token.issuer.clone(),
            subject: token.subject.clone(),
            token_id: token.token_id.clone(),
            expires_at: token.expires_at,
            issued_at: token.issued_at,
            claims: token.claims.clone(),
        };
        match serde_json::to_vec(&entry) {
            Ok(bytes) if bytes.len() <= MAX_ENTRY_BYTES => self.store.set(&name, &bytes),
            _ => {} // too large to share: the local cache still has it
        }
    }

    /// The token another VM verified under this key, if its entry is usable here at `now`, with
    /// the time until which it may be used. Checked, as a local cache hit is:
    /// - the entry is for this very token (full 128-bit keyed hash, not just the slot);
    /// - the issuer exists in this VM's bundle under the same name and `iss`;
    /// - that issuer's key set is usable now and is the very set the token was verified with (same
    ///   fingerprint): a rotated or stale key set means verifying again, as a new key-set
    ///   generation does for the local cache;
    /// - `now` is within the entry's lifetime, which may not exceed the token's `exp`.
    ///
    /// The caller then checks age limits, and every request checks revocation and binding.
    pub fn get(&self, key: &[u8; 16], issuers: &Issuers, now: u64) -> Option<(VerifiedToken, u64)> {
        let bytes = self.store.get(&self.slot_name(key)?)?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        if entry.key != hex(key) || now > entry.until {
            return None;
        }
        if entry.expires_at.is_some_and(|exp| entry.until > exp) {
            return None;
        }
        let issuer = issuers.get(&entry.issuer_name).filter(|i| i.issuer == entry.issuer)?;
        if !issuer.keys_usable(now) || hex(&issuer.key_set_fingerprint()) != entry.keys {
            return None;
        }
        let token = VerifiedToken {
            issuer_name: entry.issuer_name,
            profile: issuer.profile.name(),
            issuer: entry.issuer,
            subject: entry.subject,
            token_id: entry.token_id,
            expires_at: entry.expires_at,
            issued_at: entry.issued_at,
            claims: entry.claims,
        };
        Some((token, entry.until))
    }
}

/// Remote key sets fetched once per process: one VM claims a fetch (a lease in shared data, taken
/// with compare-and-swap) and publishes the response; the others install the published response
/// instead of fetching. A published key set is parsed and checked by each VM exactly as a response
/// of its own fetch would be (`Issuer::fetch_completed`): only the HTTP round trip is shared.
pub struct SharedFetches {
    store: Box<dyn SharedStore>,
    /// `meshward/<bundle policy digest>/`.
    namespace: String,
    /// This VM's lease value, so that it recognises its own claim.
    owner: u64,
}

/// A fetch response as published in shared data.
#[derive(Serialize, Deserialize)]
struct Published {
    /// When it was fetched (unix seconds): the key set's age counts from there in every VM.
    at: u64,
    body: String,
}

impl SharedFetches {
    /// Fetches of the bundle with this SHA-256 (hex), shared in `store`.
    pub fn new(store: Box<dyn SharedStore>, bundle_sha256: &str) -> Self {
        let owner =
            CacheKeyer::random().map_or(1, |k| k.to_bytes().iter().fold(1u64, |a, &b| a << 8 | u64::from(b)));
        SharedFetches { store, namespace: format!("meshward/{bundle_sha256}/"), owner }
    }

    fn name(&self, kind: &str, issuer: &str, path: &str) -> String {
        format!("{}{kind}/{issuer}/{path}", self.namespace)
    }

    /// Claims the fetch of `path` for `issuer` until `until_ms`, unless another VM holds an
    /// unexpired claim. Whether this VM is to fetch.
    pub fn claim(&self, issuer: &str, path: &str, now_ms: u64, until_ms: u64) -> bool {
        let name = self.name("lease", issuer, path);
        let (value, version) = self.store.get_versioned(&name);
        let held = value
            .and_then(|v| serde_json::from_slice::<(u64, u64)>(&v).ok())
            .is_some_and(|(owner, until)| owner != self.owner && until > now_ms);
        if held {
            return false;
        }
        let Ok(lease) = serde_json::to_vec(&(self.owner, until_ms)) else { return true };
        // With a version, compare-and-swap settles a race; without (the first claim ever), read
        // back: of two VMs writing at once, the one whose value stayed fetches.
        self.store.set_versioned(&name, &lease, version)
            && (version.is_some() || self.store.get(&name).as_deref() == Some(lease.as_slice()))
    }

    /// Publishes this VM's successful fetch of `path`, made at `at`.
    pub fn publish(&self, issuer: &str, path: &str, at: u64, body: &[u8]) {
        let Ok(body) = String::from_utf8(body.to_vec()) else { return };
        if let Ok(bytes) = serde_json::to_vec(&Published { at, body }) {
            self.store.set(&self.name("fetched", issuer, path), &bytes);
        }
    }

    /// A response to the fetch of `path` that another VM published, if it is newer than the key
    /// set this VM installed at `installed_at` and younger than `refresh_seconds` at `now`: its
    /// time and body, for `Issuer::fetch_completed`.
    pub fn adoptable(
        &self,
        issuer: &str,
        path: &str,
        installed_at: Option<u64>,
        refresh_seconds: u64,
        now: u64,
    ) -> Option<(u64, Vec<u8>)> {
        let bytes = self.store.get(&self.name("fetched", issuer, path))?;
        let published: Published = serde_json::from_slice(&bytes).ok()?;
        let newer = installed_at.is_none_or(|installed| published.at > installed);
        (newer && now.saturating_sub(published.at) < refresh_seconds && published.at <= now)
            .then(|| (published.at, published.body.into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    /// Shared data in memory with versions; clones share the map (as VMs share the host's).
    #[derive(Clone, Default)]
    pub struct MemoryStore(Rc<RefCell<HashMap<String, Versioned>>>);

    /// A value and its version.
    type Versioned = (Vec<u8>, u32);

    impl SharedStore for MemoryStore {
        fn get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.0.borrow().get(key) {
                Some((value, version)) => (Some(value.clone()), Some(*version)),
                None => (None, None),
            }
        }
        fn set_versioned(&self, key: &str, value: &[u8], version: Option<u32>) -> bool {
            let mut map = self.0.borrow_mut();
            let current = map.get(key).map(|(_, v)| *v);
            if let (Some(current), Some(expected)) = (current, version) {
                if current != expected {
                    return false;
                }
            }
            map.insert(key.to_owned(), (value.to_vec(), current.map_or(1, |v| v + 1)));
            true
        }
    }

    #[test]
    fn one_vm_fetches_and_the_others_adopt_what_it_published() {
        let store = MemoryStore::default();
        let a = SharedFetches::new(Box::new(store.clone()), "d");
        let b = SharedFetches::new(Box::new(store.clone()), "d");
        assert!(a.claim("i", "/jwks", 1_000, 3_000));
        assert!(!b.claim("i", "/jwks", 1_500, 3_500), "a holds the lease");
        assert!(a.claim("i", "/jwks", 1_600, 3_600), "a may renew its own");
        assert!(b.adoptable("i", "/jwks", None, 300, 1).is_none(), "nothing published yet");
        a.publish("i", "/jwks", 2, b"{\"keys\":[]}");
        assert_eq!(b.adoptable("i", "/jwks", None, 300, 3), Some((2, b"{\"keys\":[]}".to_vec())));
        // Not older than what b has, and not past the refresh period.
        assert!(b.adoptable("i", "/jwks", Some(2), 300, 3).is_none());
        assert!(b.adoptable("i", "/jwks", Some(1), 300, 302).is_none());
        assert!(b.adoptable("i", "/other", None, 300, 3).is_none());
        // Once the lease has expired, another VM claims.
        assert!(b.claim("i", "/jwks", 3_601, 5_000));
        assert!(!a.claim("i", "/jwks", 3_700, 5_100));
        // Another bundle's fetches are its own.
        let c = SharedFetches::new(Box::new(store), "e");
        assert!(c.claim("i", "/jwks", 3_700, 5_100));
    }

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // vectors_sip128 of the reference implementation: key 00..0f, message 00..(n-1).
        let key: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let keyer = CacheKeyer::from_bytes(key);
        let message: Vec<u8> = (0..16u8).collect();
        let hash = |n: usize| siphash24_128(keyer.k0, keyer.k1, &message[..n]);
        assert_eq!(hex(&hash(0)), "a3817f04ba25a8e66df67214c7550293");
        assert_eq!(hex(&hash(1)), "da87c1d86b99af44347659119b22fc45");
        // Whole 8-byte words go through the same compression: every length gives its own hash.
        let all: std::collections::HashSet<_> = (0..=15).map(hash).collect();
        assert_eq!(all.len(), 16);
        assert_eq!(keyer.to_bytes(), key);
    }

    #[test]
    fn keys_differ_with_the_secret() {
        let a = CacheKeyer::from_bytes([1; 16]);
        let b = CacheKeyer::from_bytes([2; 16]);
        assert_ne!(a.key("token"), b.key("token"));
        assert_ne!(a.key("token"), a.key("tokem"));
        assert_ne!(CacheKeyer::random().unwrap(), CacheKeyer::random().unwrap());
    }

    #[test]
    fn every_vm_adopts_the_first_shared_key() {
        let store = MemoryStore::default();
        let first = SharedTokens::new(Box::new(store.clone()), "aa", 16);
        let second = SharedTokens::new(Box::new(store.clone()), "aa", 16);
        let a = first.keyer(CacheKeyer::from_bytes([1; 16]));
        let b = second.keyer(CacheKeyer::from_bytes([2; 16]));
        assert_eq!(a, CacheKeyer::from_bytes([1; 16]));
        assert_eq!(b, a, "the second VM uses the first one's key");
        // Another bundle has its own key.
        let other = SharedTokens::new(Box::new(store), "bb", 16);
        assert_eq!(other.keyer(CacheKeyer::from_bytes([3; 16])), CacheKeyer::from_bytes([3; 16]));
    }
}
