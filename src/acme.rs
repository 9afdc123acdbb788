//! The RFC 7638 thumbprint of an ACME account key (`sniroute acme-thumbprint`).
//!
//! An HTTP-01 challenge is answered with `token.thumbprint`, so an edge node that
//! knows the account's thumbprint can answer for any client that uses that
//! account, without the key itself. This module reads the account key in the
//! forms ACME clients store it (a JWK, a PEM private key, Traefik's acme.json)
//! and hashes the canonical JWK of its public half.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use rustls::pki_types::pem::{PemObject, SectionKind};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::asn1_rs::{Any, Class, FromDer, Oid, Tag};

/// What the command accepts, said in every "this is not it" error.
const EXPECTED: &str =
    "expected an ACME account key: a JWK (JSON with \"kty\"), a PEM private key \
     (RSA, or EC on P-256 or P-384) or a Traefik acme.json";

#[derive(Debug, Error)]
pub enum Error {
    #[error("not an ACME account key; {EXPECTED}")]
    Unrecognised,
    #[error("invalid JSON ({0}); {EXPECTED}")]
    Json(serde_json::Error),
    #[error("a {0}, not a private key; {EXPECTED}")]
    NotAKey(&'static str),
    #[error(
        "the PEM private key is encrypted; decrypt it first (openssl pkey -in FILE -out PLAIN)"
    )]
    Encrypted,
    #[error("unreadable PEM ({0}); {EXPECTED}")]
    Pem(String),
    #[error(
        "unsupported key type: {0}; ACME account keys here must be RSA, or EC on P-256 or P-384"
    )]
    Unsupported(String),
    #[error("JWK member \"{member}\": {problem}")]
    Jwk {
        member: &'static str,
        problem: String,
    },
    #[error("malformed {what}: {problem}")]
    Der { what: &'static str, problem: String },
    #[error(
        "the EC private key does not include its public key (SEC1 publicKey); \
         rewrite it with the public key: openssl ec -in FILE -out WITH_PUBLIC"
    )]
    NoPublicKey,
    #[error("the acme.json names no resolver; is this Traefik's ACME storage file?")]
    NoResolver,
    #[error("no resolver \"{name}\" in the acme.json; its resolvers: {known}")]
    UnknownResolver { name: String, known: String },
    #[error(
        "resolver \"{0}\" has no account key (Account.PrivateKey); \
         let Traefik register the account first, or pick another with --resolver"
    )]
    NoAccount(String),
    #[error("resolver \"{resolver}\": Account.PrivateKey: {problem}")]
    Account { resolver: String, problem: String },
    #[error("--resolver applies to a Traefik acme.json only; this file is a {0}")]
    ResolverNotApplicable(&'static str),
}

/// The thumbprint (base64url, no padding: 43 characters) of the account key in
/// `input`; `resolver` picks an account of a Traefik acme.json (default: the
/// first in the file).
pub fn thumbprint(input: &[u8], resolver: Option<&str>) -> Result<String, Error> {
    Ok(public_key(input, resolver)?.thumbprint())
}

/// The public half of an account key: all the thumbprint is made of.
#[derive(Debug, PartialEq)]
enum PublicKey {
    /// Unsigned big-endian, without leading zero bytes.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Coordinates padded to the curve's length.
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

impl PublicKey {
    /// RFC 7638 section 3: the required members only, in lexicographic order,
    /// no whitespace.
    fn canonical_jwk(&self) -> String {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        match self {
            PublicKey::Rsa { n, e } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n))
            }
            PublicKey::Ec { curve, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                curve.name(),
                b64(x),
                b64(y)
            ),
        }
    }

    fn thumbprint(&self) -> String {
        let digest = Sha256::digest(self.canonical_jwk().as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    }
}

fn public_key(input: &[u8], resolver: Option<&str>) -> Result<PublicKey, Error> {
    let text = input.trim_ascii_start();
    if text.starts_with(b"{") {
        let object = serde_json::from_slice::<Ordered>(text).map_err(Error::Json)?;
        if object.get("kty").is_some() {
            if resolver.is_some() {
                return Err(Error::ResolverNotApplicable("JWK"));
            }
            return from_jwk(&object);
        }
        return from_acme_json(object, resolver);
    }
    if contains(input, b"-----BEGIN ") {
        if resolver.is_some() {
            return Err(Error::ResolverNotApplicable("PEM file"));
        }
        return from_pem(input);
    }
    Err(Error::Unrecognised)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A JSON object with its members in file order: Traefik's default resolver
/// is the first one in acme.json, and serde_json's map sorts its keys.
struct Ordered(Vec<(String, Value)>);

impl Ordered {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Ordered(members))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

fn from_jwk(jwk: &Ordered) -> Result<PublicKey, Error> {
    let member = |name: &'static str| -> Result<Vec<u8>, Error> {
        let problem = |problem: &str| Error::Jwk {
            member: name,
            problem: problem.to_string(),
        };
        let text = jwk
            .get(name)
            .ok_or_else(|| problem("missing"))?
            .as_str()
            .ok_or_else(|| problem("not a string"))?;
        // Some writers pad; RFC 7515 says not to, but the value is the same.
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        LENIENT
            .decode(text)
            .map_err(|e| problem(&format!("not base64url ({e})")))
    };
    let text_member = |name: &'static str| -> Result<&str, Error> {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Jwk {
                member: name,
                problem: "missing, or not a string".to_string(),
            })
    };
    match text_member("kty")? {
        "RSA" => Ok(PublicKey::Rsa {
            n: rsa_integer(&member("n")?).map_err(|problem| Error::Jwk {
                member: "n",
                problem,
            })?,
            e: rsa_integer(&member("e")?).map_err(|problem| Error::Jwk {
                member: "e",
                problem,
            })?,
        }),
        "EC" => {
            let curve = match text_member("crv")? {
                "P-256" => Curve::P256,
                "P-384" => Curve::P384,
                other => return Err(Error::Unsupported(format!("EC on curve {other}"))),
            };
            let coordinate = |name: &'static str| -> Result<Vec<u8>, Error> {
                pad(member(name)?, curve).map_err(|problem| Error::Jwk {
                    member: name,
                    problem,
                })
            };
            Ok(PublicKey::Ec {
                curve,
                x: coordinate("x")?,
                y: coordinate("y")?,
            })
        }
        "OKP" => Err(Error::Unsupported(format!(
            "OKP ({})",
            text_member("crv").unwrap_or("no crv")
        ))),
        other => Err(Error::Unsupported(format!("JWK kty \"{other}\""))),
    }
}

/// An RSA modulus or exponent as the thumbprint wants it: no leading zeros
/// (DER puts one before a high bit; some JWK writers keep it).
fn rsa_integer(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    if start == bytes.len() {
        return Err("zero or empty".to_string());
    }
    Ok(bytes[start..].to_vec())
}

/// An EC coordinate at the curve's length: a writer that dropped leading zeros
/// gets them back, since the thumbprint hashes the fixed-length form.
fn pad(bytes: Vec<u8>, curve: Curve) -> Result<Vec<u8>, String> {
    let len = curve.coordinate_len();
    if bytes.len() > len {
        return Err(format!(
            "{} bytes, more than the {len} of {}",
            bytes.len(),
            curve.name()
        ));
    }
    let mut padded = vec![0; len - bytes.len()];
    padded.extend_from_slice(&bytes);
    Ok(padded)
}

fn from_acme_json(object: Ordered, resolver: Option<&str>) -> Result<PublicKey, Error> {
    if object.0.is_empty() {
        return Err(Error::NoResolver);
    }
    let (name, entry) =
        match resolver {
            None => &object.0[0],
            Some(wanted) => object.0.iter().find(|(k, _)| k == wanted).ok_or_else(|| {
                Error::UnknownResolver {
                    name: wanted.to_string(),
                    known: object
                        .0
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?,
        };
    // A JSON object that is neither a JWK nor resolvers holding an Account is
    // some other file.
    let Some(entry) = entry.as_object() else {
        return Err(Error::Unrecognised);
    };
    let account = match entry.get("Account") {
        None => return Err(Error::Unrecognised),
        Some(Value::Null) => return Err(Error::NoAccount(name.clone())),
        Some(account) => account,
    };
    let problem = |problem: String| Error::Account {
        resolver: name.clone(),
        problem,
    };
    let encoded = match account.get("PrivateKey") {
        None | Some(Value::Null) => return Err(Error::NoAccount(name.clone())),
        Some(Value::String(s)) => s,
        Some(_) => return Err(problem("not a string".to_string())),
    };
    // Go's encoding/json writes []byte as standard, padded base64.
    let der = STANDARD
        .decode(encoded)
        .map_err(|e| problem(format!("not base64 ({e})")))?;
    from_der_any(&der).map_err(|e| problem(e.to_string()))
}

fn from_pem(input: &[u8]) -> Result<PublicKey, Error> {
    if contains(input, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(Error::Encrypted);
    }
    let mut found = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(input) {
        let (kind, der) = section.map_err(|e| Error::Pem(e.to_string()))?;
        match kind {
            SectionKind::RsaPrivateKey => return from_pkcs1(&der),
            SectionKind::EcPrivateKey => return from_sec1(&der, None),
            SectionKind::PrivateKey => return from_pkcs8(&der),
            SectionKind::Certificate => found = found.or(Some("certificate")),
            SectionKind::PublicKey => found = found.or(Some("public key")),
            _ => found = found.or(Some("PEM file without a private key")),
        }
    }
    Err(found.map_or(Error::Unrecognised, Error::NotAKey))
}

/// A DER private key of unknown format (Traefik stores PKCS#1 or SEC1): the
/// second member of the outer SEQUENCE tells them apart.
fn from_der_any(der: &[u8]) -> Result<PublicKey, Error> {
    let members = sequence(der, "private key")?;
    match members.get(1).map(|m| m.header.tag()) {
        Some(Tag::Integer) => from_pkcs1(der),
        Some(Tag::OctetString) => from_sec1(der, None),
        Some(Tag::Sequence) => from_pkcs8(der),
        _ => Err(Error::Der {
            what: "private key",
            problem: "neither PKCS#1, SEC1 nor PKCS#8".to_string(),
        }),
    }
}

fn der_error(what: &'static str, problem: impl Into<String>) -> Error {
    Error::Der {
        what,
        problem: problem.into(),
    }
}

/// The members of the DER SEQUENCE that `der` is, and nothing after it.
fn sequence<'a>(der: &'a [u8], what: &'static str) -> Result<Vec<Any<'a>>, Error> {
    let (rest, outer) = Any::from_der(der).map_err(|e| der_error(what, e.to_string()))?;
    if outer.header.tag() != Tag::Sequence || !rest.is_empty() {
        return Err(der_error(what, "not a single DER SEQUENCE"));
    }
    members(outer.data, what)
}

fn members<'a>(mut data: &'a [u8], what: &'static str) -> Result<Vec<Any<'a>>, Error> {
    let mut members = Vec::new();
    while !data.is_empty() {
        let (rest, member) = Any::from_der(data).map_err(|e| der_error(what, e.to_string()))?;
        members.push(member);
        data = rest;
    }
    Ok(members)
}

/// The member at `index`, which must have `tag`.
fn member<'a>(
    members: &[Any<'a>],
    index: usize,
    tag: Tag,
    what: &'static str,
    name: &str,
) -> Result<&'a [u8], Error> {
    match members.get(index) {
        Some(m) if m.header.class() == Class::Universal && m.header.tag() == tag => Ok(m.data),
        _ => Err(der_error(what, format!("no {name}"))),
    }
}

/// PKCS#1 RSAPrivateKey: SEQUENCE { version, n, e, d, ... }.
fn from_pkcs1(der: &[u8]) -> Result<PublicKey, Error> {
    const WHAT: &str = "PKCS#1 RSA private key";
    let members = sequence(der, WHAT)?;
    let integer = |index, name| -> Result<Vec<u8>, Error> {
        let bytes = member(&members, index, Tag::Integer, WHAT, name)?;
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(der_error(WHAT, format!("negative {name}")));
        }
        rsa_integer(bytes).map_err(|problem| der_error(WHAT, format!("{name}: {problem}")))
    };
    Ok(PublicKey::Rsa {
        n: integer(1, "modulus")?,
        e: integer(2, "public exponent")?,
    })
}

const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const SECP384R1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// Names the algorithms and curves people try, for the "unsupported" error.
fn oid_name(oid: &[u8]) -> String {
    let dotted = Oid::new(Cow::Borrowed(oid)).to_id_string();
    let name = match dotted.as_str() {
        "1.3.101.110" => "X25519",
        "1.3.101.111" => "X448",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.3.132.0.35" => "P-521",
        "1.3.132.0.10" => "secp256k1",
        "1.2.840.10040.4.1" => "DSA",
        "1.2.840.113549.1.1.10" => "RSA-PSS",
        _ => return format!("OID {dotted}"),
    };
    format!("{name} (OID {dotted})")
}

fn curve_of(oid: &[u8]) -> Result<Curve, Error> {
    match oid {
        PRIME256V1 => Ok(Curve::P256),
        SECP384R1 => Ok(Curve::P384),
        other => Err(Error::Unsupported(format!("EC on {}", oid_name(other)))),
    }
}

/// PKCS#8 PrivateKeyInfo: SEQUENCE { version, AlgorithmIdentifier, OCTET
/// STRING holding the PKCS#1 or SEC1 key, ... }.
fn from_pkcs8(der: &[u8]) -> Result<PublicKey, Error> {
    const WHAT: &str = "PKCS#8 private key";
    let members = sequence(der, WHAT)?;
    let algorithm = members
        .get(1)
        .filter(|m| m.header.tag() == Tag::Sequence)
        .ok_or_else(|| der_error(WHAT, "no algorithm"))?;
    let algorithm = self::members(algorithm.data, WHAT)?;
    let oid = member(&algorithm, 0, Tag::Oid, WHAT, "algorithm")?;
    let key = member(&members, 2, Tag::OctetString, WHAT, "private key")?;
    match oid {
        RSA_ENCRYPTION => from_pkcs1(key),
        EC_PUBLIC_KEY => {
            let curve = curve_of(member(&algorithm, 1, Tag::Oid, WHAT, "EC curve")?)?;
            from_sec1(key, Some(curve))
        }
        other => Err(Error::Unsupported(oid_name(other))),
    }
}

/// SEC1 ECPrivateKey: SEQUENCE { version, privateKey, \[0\] curve OPTIONAL,
/// \[1\] publicKey OPTIONAL }. The public point is taken from \[1\] rather than
/// computed, which would take EC arithmetic this crate does not carry.
fn from_sec1(der: &[u8], outer_curve: Option<Curve>) -> Result<PublicKey, Error> {
    const WHAT: &str = "SEC1 EC private key";
    let members = sequence(der, WHAT)?;
    let tagged = |number: u32| {
        members
            .iter()
            .skip(2)
            .find(|m| m.header.class() == Class::ContextSpecific && m.header.tag() == Tag(number))
    };
    let curve = match tagged(0) {
        Some(params) => {
            let inner = self::members(params.data, WHAT)?;
            Some(curve_of(member(&inner, 0, Tag::Oid, WHAT, "curve")?)?)
        }
        None => outer_curve,
    };
    let Some(public) = tagged(1) else {
        return Err(Error::NoPublicKey);
    };
    let inner = self::members(public.data, WHAT)?;
    let bits = member(&inner, 0, Tag::BitString, WHAT, "public key")?;
    // A BIT STRING starts with its count of unused bits; a point has none.
    let point = match bits.split_first() {
        Some((0, point)) => point,
        _ => return Err(der_error(WHAT, "public key is not a whole number of bytes")),
    };
    let curve = match (curve, point.len()) {
        (Some(curve), _) => curve,
        (None, 65) => Curve::P256,
        (None, 97) => Curve::P384,
        (None, _) => return Err(der_error(WHAT, "no curve named")),
    };
    let len = curve.coordinate_len();
    match point.split_first() {
        Some((0x04, xy)) if xy.len() == 2 * len => Ok(PublicKey::Ec {
            curve,
            x: xy[..len].to_vec(),
            y: xy[len..].to_vec(),
        }),
        Some((0x02 | 0x03, _)) => Err(der_error(
            WHAT,
            "the public key is a compressed point; rewrite the key uncompressed: \
             openssl ec -in FILE -conv_form uncompressed -out UNCOMPRESSED",
        )),
        _ => Err(der_error(
            WHAT,
            format!("public key is not an uncompressed {} point", curve.name()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 section 3.1's example key and its published thumbprint.
    const RFC_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    const RFC_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    #[test]
    fn thumbprint_of_the_rfc_7638_example_key() {
        let jwk =
            format!(r#"{{"kty":"RSA","n":"{RFC_N}","e":"AQAB","alg":"RS256","kid":"2011-04-29"}}"#);
        assert_eq!(thumbprint(jwk.as_bytes(), None).unwrap(), RFC_THUMBPRINT);
    }

    #[test]
    fn canonical_jwk_has_only_required_members_in_order() {
        let jwk =
            format!(" \n{{\"e\": \"AQAB\", \"d\": \"AQ\", \"n\": \"{RFC_N}\", \"kty\": \"RSA\"}}");
        let key = public_key(jwk.as_bytes(), None).unwrap();
        assert_eq!(
            key.canonical_jwk(),
            format!(r#"{{"e":"AQAB","kty":"RSA","n":"{RFC_N}"}}"#)
        );
    }

    #[test]
    fn rsa_leading_zeros_and_padding_do_not_change_the_thumbprint() {
        // The example modulus with a zero byte in front, padded, and e as "AAEAAQ".
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(RFC_N)
            .unwrap();
        let mut zeroed = vec![0];
        zeroed.extend(&n);
        let n0 = base64::engine::general_purpose::URL_SAFE.encode(zeroed);
        let jwk = format!(r#"{{"kty":"RSA","n":"{n0}","e":"AAEAAQ"}}"#);
        assert_eq!(thumbprint(jwk.as_bytes(), None).unwrap(), RFC_THUMBPRINT);
    }

    #[test]
    fn ec_coordinates_are_padded_to_the_curve_length() {
        let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 31]);
        let full = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([2u8; 32]);
        let jwk = format!(r#"{{"kty":"EC","crv":"P-256","x":"{short}","y":"{full}"}}"#);
        let PublicKey::Ec { x, y, .. } = public_key(jwk.as_bytes(), None).unwrap() else {
            panic!("not EC");
        };
        assert_eq!((x.len(), x[0], y.len()), (32, 0, 32));
    }

    #[test]
    fn acme_json_resolvers_keep_file_order() {
        let json = r#"{"zeta": {"Account": null}, "alpha": {"Account": {"PrivateKey": "!"}}}"#;
        assert!(matches!(
            thumbprint(json.as_bytes(), None),
            Err(Error::NoAccount(name)) if name == "zeta"
        ));
        let err = thumbprint(json.as_bytes(), Some("beta")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no resolver \"beta\" in the acme.json; its resolvers: zeta, alpha"
        );
    }

    #[test]
    fn rejects_what_is_not_a_supported_key() {
        for (input, words) in [
            (&b"hello"[..], "not an ACME account key"),
            (
                b"{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"}",
                "OKP (Ed25519)",
            ),
            (
                b"{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":\"AA\"}",
                "EC on curve P-521",
            ),
            (
                b"{\"kty\":\"RSA\",\"e\":\"AQAB\"}",
                "JWK member \"n\": missing",
            ),
            (b"{\"a\": 1}", "not an ACME account key"),
            (b"{1", "invalid JSON"),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "a certificate",
            ),
        ] {
            let err = thumbprint(input, None).unwrap_err().to_string();
            assert!(err.contains(words), "{err}");
        }
    }
}
