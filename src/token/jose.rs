//! Strict JOSE decoding: base64url segments into JSON objects without duplicate member names.

use super::*;

/// A compact JWS with each part decoded once, strictly ([`decode_object`] for header and payload):
/// what every later check reads, the signature checks of [`super::hostcrypto`] included, so nothing
/// is decoded or parsed twice.
pub(crate) struct Jws<'a> {
    /// The protected header.
    pub(crate) header: Map<String, Value>,
    /// The claims.
    pub(crate) payload: Map<String, Value>,
    /// The signature bytes.
    pub(crate) signature: Vec<u8>,
    /// `header.payload` as the token spells them (base64url): the signed text.
    pub(crate) signed: &'a str,
    /// The length of the header's base64url text.
    pub(crate) header_b64_len: usize,
    /// The length of the whole token.
    pub(crate) token_len: usize,
}

impl<'a> Jws<'a> {
    /// Splits a compact JWS into its three parts (none empty) and decodes each.
    pub(crate) fn decode(token: &'a str) -> Result<Self, Reason> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::TokenMalformed);
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
            return Err(Reason::TokenMalformed);
        }
        let header = decode_object(header_b64)?;
        let payload = decode_object(payload_b64)?;
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| Reason::TokenMalformed)?;
        let signed = token.get(..header_b64.len() + 1 + payload_b64.len()).ok_or(Reason::TokenMalformed)?;
        Ok(Jws {
            header,
            payload,
            signature,
            signed,
            header_b64_len: header_b64.len(),
            token_len: token.len(),
        })
    }
}

/// Decodes one base64url segment into a JSON object, strictly: no padding, no stray bits, UTF-8,
/// and no duplicate member names at any depth (RFC 7515 5.2 / RFC 8725 3.x).
pub(super) fn decode_object(segment: &str) -> Result<Map<String, Value>, Reason> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| Reason::TokenMalformed)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Reason::TokenMalformed)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let UniqueValue(value) = de::Deserialize::deserialize(&mut de).map_err(|_| Reason::TokenMalformed)?;
    de.end().map_err(|_| Reason::TokenMalformed)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Reason::TokenMalformed),
    }
}

/// A JSON value that refuses duplicate object member names.
pub(super) struct UniqueValue(Value);

impl<'de> de::Deserialize<'de> for UniqueValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(UniqueValue)
    }
}

pub(super) struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueValue(value) = map.next_value()?;
            if out.insert(key, value).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(out))
    }
}
