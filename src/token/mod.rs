//! Workload tokens: finding the bearer token in a request, and verifying it against the configured
//! issuers into a [`VerifiedToken`].
//!
//! Structure, encoding and header checks happen here, before any signature work, so that malformed
//! or hostile tokens are turned away cheaply and with a precise reason. The signature and the time
//! claims are then checked by `jwt-simple`, with a key whose algorithm comes from configuration, never
//! from the token.
//!
//! `keys` (algorithms, JWKs to keys), `issuer` (an issuer compiled from configuration), `verify` (the
//! pipeline: bearer token to [`VerifiedToken`]), `jose` (strict segment decoding); around them
//! `profile`, `source` (where tokens are found), `claims`, `cache` and `shared` (verified tokens, in
//! this VM and across the VMs of one Envoy), `remote` (fetched key sets) and `hostcrypto` (signature
//! checks by the host). The four inner files share this module's imports (`use super::*`).

#![forbid(unsafe_code)]

mod issuer;
mod jose;
mod keys;
mod verify;

pub mod cache;
pub mod claims;
pub mod hostcrypto;
pub mod profile;
pub mod remote;
pub mod shared;
pub mod source;

use std::collections::HashSet;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use std::cell::RefCell;

use crate::decision::Reason;
use hostcrypto::{Expected, HashFunction, HostCryptoError, HostKey, SignatureHost, Times};
use profile::Profile;
use remote::{Fetch, FetchOutcome, RemoteJwksConfig, RemoteKeys};

pub use issuer::{CertificateBinding, Issuer, IssuerSpec};
pub use keys::Algorithm;
pub use verify::{bearer_token, scheme_token, Issuers, VerifiedToken};
// The inner files' items, for each other (through their `use super::*`).
#[allow(unused_imports)]
use {issuer::*, jose::*, keys::*, verify::*};
