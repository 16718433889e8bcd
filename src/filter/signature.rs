//! [`SignatureHost`] on Envoy's `verify_signature` foreign function (BoringSSL in the host).

use proxy_wasm::hostcalls;

use crate::token::hostcrypto::{self, HashFunction, HostCryptoError, SignatureHost};

/// Signature checks through Envoy's `verify_signature`.
pub(super) struct EnvoySignatures;

impl SignatureHost for EnvoySignatures {
    fn verify(
        &self,
        hash: HashFunction,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Result<bool, HostCryptoError> {
        let arguments = hostcrypto::encode_arguments(hash, spki_der, signature, message);
        match hostcalls::call_foreign_function("verify_signature", Some(&arguments)) {
            Ok(Some(result)) => hostcrypto::decode_result(&result),
            // An empty VerifySignatureResult: `result` is false (proto3 leaves it out).
            Ok(None) => hostcrypto::decode_result(&[]),
            Err(status) => Err(HostCryptoError::Call(format!("{status:?}"))),
        }
    }
}
