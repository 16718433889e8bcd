#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! The host signature path (`meshward::token::hostcrypto`) natively: the wire encoding it sends to Envoy's
//! `verify_signature`, and the differential test against the pure-Rust path, with a stand-in host
//! built on the native `p256`/`p384`/`rsa` crates reading the DER keys and signatures meshward
//! produces (the same test runs in real Envoy, against BoringSSL, in tests/e2e_hostcrypto.rs).

#[path = "support/signature_cases.rs"]
mod cases;

use std::cell::Cell;
use std::rc::Rc;

use meshward::token::hostcrypto::{
    decode_result, ecdsa_signature_der, encode_arguments, probe, HashFunction, HostCryptoError, SignatureHost,
};
use meshward::{BundleConfig, Engine, Reason};
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;

const NOW: u64 = 1_800_000_000;

/// What BoringSSL does behind `verify_signature`, with native crates: a key that does not parse is a
/// `BadArgument`; a signature that does not parse or verify is `false`.
struct NativeHost {
    calls: Rc<Cell<usize>>,
}

impl SignatureHost for NativeHost {
    fn verify(
        &self,
        hash: HashFunction,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Result<bool, HostCryptoError> {
        self.calls.set(self.calls.get() + 1);
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der) {
            assert_eq!(hash, HashFunction::Sha256);
            let Ok(sig) = p256::ecdsa::Signature::from_der(signature) else { return Ok(false) };
            return Ok(key.verify(message, &sig).is_ok());
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(spki_der) {
            assert_eq!(hash, HashFunction::Sha384);
            let Ok(sig) = p384::ecdsa::Signature::from_der(signature) else { return Ok(false) };
            return Ok(key.verify(message, &sig).is_ok());
        }
        let key = rsa::RsaPublicKey::from_public_key_der(spki_der)
            .map_err(|_| HostCryptoError::Call("BadArgument".into()))?;
        let Ok(sig) = rsa::pkcs1v15::Signature::try_from(signature) else { return Ok(false) };
        Ok(match hash {
            HashFunction::Sha256 => {
                rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(key).verify(message, &sig)
            }
            HashFunction::Sha384 => {
                rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha384>::new(key).verify(message, &sig)
            }
            HashFunction::Sha512 => {
                rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha512>::new(key).verify(message, &sig)
            }
        }
        .is_ok())
    }
}

/// A host that always gives the same answer (or fails).
struct FixedHost(Result<bool, HostCryptoError>);

impl SignatureHost for FixedHost {
    fn verify(&self, _: HashFunction, _: &[u8], _: &[u8], _: &[u8]) -> Result<bool, HostCryptoError> {
        self.0.clone()
    }
}

fn engine(host: Option<Box<dyn SignatureHost>>) -> Engine {
    engine_of(cases::bundle(), host)
}

fn engine_of(bundle: serde_json::Value, host: Option<Box<dyn SignatureHost>>) -> Engine {
    let bytes = serde_json::to_vec(&bundle).unwrap();
    let (mut engine, warnings) = BundleConfig::from_json(&bytes).unwrap().compile().unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    if let Some(host) = host {
        engine.set_signature_host(host);
    }
    engine
}

fn host_checks(name: &str) -> bool {
    ["RS256", "RS384", "RS512", "ES256", "ES384"].iter().any(|alg| name.starts_with(alg))
}

#[test]
fn every_token_gets_the_same_answer_on_the_host_path_as_on_the_pure_rust_path() {
    let calls = Rc::new(Cell::new(0));
    let pure = engine(None);
    let host = engine(Some(Box::new(NativeHost { calls: calls.clone() })));
    let cases = cases::cases(NOW);
    let mut valid = 0;
    for case in &cases {
        let before = calls.get();
        let expected = pure.issuers().verify(&case.token, NOW);
        let got = host.issuers().verify(&case.token, NOW);
        assert_eq!(got, expected, "{}: {}", case.name, case.token);
        if case.name.ends_with(" valid") {
            assert!(got.is_ok(), "{} was refused: {got:?}", case.name);
            valid += 1;
            // Valid tokens of the host algorithms are checked by the host, exactly once; others never.
            let expected_calls = usize::from(host_checks(&case.name));
            assert_eq!(calls.get() - before, expected_calls, "{}", case.name);
        }
    }
    assert_eq!(valid, 7);
    // The corpus refuses for the reasons a caller would see, not only by one catch-all.
    let reason = |name: &str| {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        host.issuers().verify(&case.token, NOW).err()
    };
    assert_eq!(reason("ES256 signature bit 0 flipped"), Some(Reason::TokenSignatureInvalid));
    assert_eq!(reason("ES384 r = s = 0"), Some(Reason::TokenSignatureInvalid));
    assert_eq!(reason("ES256 DER-encoded signature"), Some(Reason::TokenSignatureInvalid));
    assert_eq!(
        reason("RS512 signed by an untrusted key with a trusted kid"),
        Some(Reason::TokenSignatureInvalid)
    );
    assert_eq!(reason("RS256 claims expired"), Some(Reason::TokenExpired));
    assert_eq!(reason("ES384 claims wrong audience"), Some(Reason::TokenAudienceInvalid));
    assert_eq!(reason("RS384 unknown kid"), Some(Reason::TokenKeyUnknown));
}

#[test]
fn header_members_and_claims_at_the_edges_get_jwt_simple_s_answer_on_every_path() {
    // Room for the 7 KB header: jwt-simple's own header limit (8192 base64url characters) decides.
    let mut bundle = cases::bundle();
    bundle["settings"] = serde_json::json!({"max_token_bytes": 16384});
    let calls = Rc::new(Cell::new(0));
    let pure = engine_of(bundle.clone(), None);
    let host = engine_of(bundle, Some(Box::new(NativeHost { calls: calls.clone() })));
    let cases = cases::edge_cases(NOW);
    let answer = |engine: &Engine, name: &str| {
        let case = cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"));
        engine.issuers().verify(&case.token, NOW)
    };
    let mut accepted = 0;
    for case in &cases {
        let expected = pure.issuers().verify(&case.token, NOW);
        let got = host.issuers().verify(&case.token, NOW);
        assert_eq!(got, expected, "{}: {}", case.name, case.token);
        accepted += usize::from(got.is_ok());
        // EdDSA takes the mirror of jwt-simple (with ed25519-dalek) on both engines: its reference
        // is jwt-simple's own answer for the same header or claims on RS256 (the pure engine). No
        // answer here depends on the algorithm: the signatures are valid.
        if let Some(what) = case.name.strip_prefix("EdDSA ") {
            assert_eq!(got, answer(&pure, &format!("RS256 {what}")), "{}: {}", case.name, case.token);
        }
    }
    assert!(calls.get() > 0 && accepted > 20, "{} host calls, {accepted} accepted", calls.get());
    // What the corpus reaches, on every algorithm.
    for alg in ["RS256", "ES256", "EdDSA"] {
        let reason = |what: &str| answer(&host, &format!("{alg} {what}")).err();
        for what in [
            "header x5c number",
            "header x5c list of numbers",
            "header x5c string",
            "header jku number",
            "header x5u object",
            "header x5t true",
            "header x5t#S256 list",
            "header salt number",
            "header salt stray bits",
            "header salt one character",
            "header salt padded",
            "header salt standard alphabet",
            "header typ JOSE",
            "header 7 KB",
        ] {
            assert_eq!(reason(what), Some(Reason::TokenMalformed), "{alg} {what}");
        }
        for what in [
            "header x5c strings",
            "header x5c null",
            "header jwk string",
            "header salt null",
            "header salt empty",
            "header typ lower-case jwt",
            "header typ application/example+jwt",
            "header 2 KB",
            "claims exp fractional",
            "claims exp with an exponent",
            "claims exp at now - skew",
            "claims exp at now - skew + 0.5",
            "claims iat at now + skew",
            "claims nbf at now + skew",
            "claims nbf fractional past",
            "claims aud list",
            "claims aud list twice",
            "claims exp after 2106",
            "claims exp after 2106 fractional",
            "claims unknown claims",
        ] {
            assert_eq!(reason(what), None, "{alg} {what}");
        }
        assert_eq!(reason("claims exp at now - skew - 1"), Some(Reason::TokenExpired));
        assert_eq!(reason("claims exp at now - skew - 0.5"), Some(Reason::TokenExpired));
        assert_eq!(reason("claims iat at now + skew + 1"), Some(Reason::TokenNotYetValid));
        assert_eq!(reason("claims iat at now + skew + 0.5"), Some(Reason::TokenNotYetValid));
        assert_eq!(reason("claims nbf at now + skew + 0.5"), Some(Reason::TokenNotYetValid));
        assert_eq!(reason("claims aud list of others"), Some(Reason::TokenAudienceInvalid));
        assert_eq!(reason("claims aud empty list"), Some(Reason::TokenClaimInvalid));
        // jwt-simple's timestamps saturate from 2^32 seconds on (a 32.32 fixed-point number).
        let far = answer(&host, &format!("{alg} claims exp after 2106")).unwrap();
        assert_eq!(far.expires_at, Some(u64::from(u32::MAX)), "{alg}");
    }
}

#[test]
fn a_host_that_cannot_answer_denies_and_never_lets_a_token_through() {
    let failing = engine(Some(Box::new(FixedHost(Err(HostCryptoError::Call("BadArgument".into()))))));
    let unreadable = engine(Some(Box::new(FixedHost(Err(HostCryptoError::Unparsable)))));
    let refusing = engine(Some(Box::new(FixedHost(Ok(false)))));
    for case in cases::cases(NOW).iter().filter(|c| c.name.ends_with(" valid")) {
        let verify = |e: &Engine| e.issuers().verify(&case.token, NOW);
        if host_checks(&case.name) {
            assert_eq!(verify(&failing), Err(Reason::InternalError), "{}", case.name);
            assert_eq!(verify(&unreadable), Err(Reason::InternalError), "{}", case.name);
            assert_eq!(verify(&refusing), Err(Reason::TokenSignatureInvalid), "{}", case.name);
        } else {
            // PS256 and EdDSA never reach the host.
            assert!(verify(&failing).is_ok(), "{}", case.name);
        }
    }
}

#[test]
fn the_probe_accepts_a_working_host_only() {
    let calls = Rc::new(Cell::new(0));
    assert_eq!(probe(&NativeHost { calls: calls.clone() }), Ok(()));
    assert_eq!(calls.get(), 2, "one valid and one wrong signature");
    let always_true = probe(&FixedHost(Ok(true))).unwrap_err();
    assert!(always_true.contains("wrong signature was accepted"), "{always_true}");
    let always_false = probe(&FixedHost(Ok(false))).unwrap_err();
    assert!(always_false.contains("valid signature was refused"), "{always_false}");
    let missing = probe(&FixedHost(Err(HostCryptoError::Call("NotFound".into())))).unwrap_err();
    assert!(missing.contains("NotFound"), "{missing}");
}

#[test]
fn arguments_are_the_protobuf_encoding_of_verify_signature_arguments() {
    let encoded = encode_arguments(HashFunction::Sha384, b"K", b"SS", b"");
    // Fields 1 (hash_function), 2 (public_key), 3 (signature); an empty text is left out (proto3).
    assert_eq!(encoded, [&[0x0a, 6][..], b"sha384", &[0x12, 1], b"K", &[0x1a, 2], b"SS"].concat());
    // A length of 300 takes a two-byte varint (0xac 0x02).
    let text = vec![7u8; 300];
    let encoded = encode_arguments(HashFunction::Sha256, b"K", b"S", &text);
    assert_eq!(encoded[encoded.len() - 303..encoded.len() - 300], [0x22, 0xac, 0x02]);
}

#[test]
fn results_decode_strictly() {
    assert_eq!(decode_result(&[]), Ok(false), "proto3 leaves a false result out");
    assert_eq!(decode_result(&[0x08, 0x01]), Ok(true));
    assert_eq!(decode_result(&[0x08, 0x00]), Ok(false));
    assert_eq!(decode_result(&[0x12, 0x03, b'b', b'a', b'd']), Ok(false), "an error message alone");
    assert_eq!(decode_result(&[0x12, 0x01, b'x', 0x08, 0x01]), Ok(true), "fields in any order");
    assert_eq!(decode_result(&[0x08, 0x01, 0x28, 0x05]), Ok(true), "an unknown varint field is skipped");
    assert_eq!(decode_result(&[0x08]), Err(HostCryptoError::Unparsable), "a truncated varint");
    assert_eq!(decode_result(&[0x08, 0x81]), Err(HostCryptoError::Unparsable), "an unfinished varint");
    assert_eq!(decode_result(&[0x0a, 0x01, 0x01]), Err(HostCryptoError::Unparsable), "result as bytes");
    assert_eq!(decode_result(&[0x12, 0x05, b'x']), Err(HostCryptoError::Unparsable), "a short string");
    assert_eq!(decode_result(&[0x00, 0x01]), Err(HostCryptoError::Unparsable), "field number 0");
    assert_eq!(decode_result(&[0x0b]), Err(HostCryptoError::Unparsable), "a group");
}

#[test]
fn ecdsa_signatures_become_the_der_a_native_parser_reads_back() {
    let mut rs = [0u8; 64];
    rs[0] = 0x80; // high bit set: a zero byte in front keeps r positive
    rs[31] = 1;
    rs[34] = 0x7f; // two leading zero bytes: stripped
    rs[63] = 2;
    let der = ecdsa_signature_der(&rs, 32).unwrap();
    assert_eq!(&der[..5], &[0x30, 2 + 33 + 2 + 30, 0x02, 33, 0x00]);
    let parsed = p256::ecdsa::Signature::from_der(&der).unwrap();
    assert_eq!(parsed.to_bytes().as_slice(), &rs[..]);
    // All-zero scalars are one zero byte each (BoringSSL then refuses them as out of range).
    assert_eq!(ecdsa_signature_der(&[0u8; 96], 48).unwrap(), [0x30, 6, 0x02, 1, 0, 0x02, 1, 0]);
    assert_eq!(ecdsa_signature_der(&[1u8; 63], 32), None);
    assert_eq!(ecdsa_signature_der(&[1u8; 65], 32), None);
}
