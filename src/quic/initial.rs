//! The SNI of a QUIC connection, read from the client's Initial packets.
//!
//! A QUIC client's first datagrams carry its ClientHello in Initial packets,
//! whose keys derive from nothing secret: a salt published per version and the
//! destination connection ID the client chose (RFC 9001 §5.2). Anyone on the
//! path can open them, and this module does only that: it removes header
//! protection from the client's Initials (QUIC v1 and v2), decrypts them, walks
//! their frames, reassembles the CRYPTO stream by offset and hands it to the
//! reader TLS over TCP uses ([`tls::handshake`]), so a name means the same on
//! both paths.
//!
//! It never encrypts or sends anything and takes no part in the handshake: the
//! server behind sniroute does that, and the datagrams reach it untouched (the
//! caller forwards its own copies). Keys live only as long as the flow's
//! [`ClientInitials`], and they open nothing but that client's Initials.
//!
//! The shape follows the TCP peekers: one state per flow, fed whole datagrams,
//! answering with a [`Parse`], so the forwarder waits the same way. Bounds:
//! `max_crypto` bytes of CRYPTO stream in at most [`MAX_PIECES`] disjoint
//! pieces, one key set at a time, and one copy of the packet being opened.

use std::ops::Range;

use ring::aead::quic::{HeaderProtectionKey, AES_128};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::error::Unspecified;
use ring::hkdf;

use crate::name::HostName;
use crate::peek::{tls, Parse, PeekError};

/// RFC 9000 §14.1: a server discards an Initial in a smaller datagram, which
/// also keeps a spoofed source from buying a large reply with a small packet.
const MIN_DATAGRAM: usize = 1200;
/// RFC 9000 §17.2: v1 (and v2) connection IDs are at most 20 bytes.
const MAX_CID: u8 = 20;
/// Disjoint pieces of the CRYPTO stream held at once. Clients leave a few
/// holes (Chromium shuffles its hello into several frames); the cap keeps a
/// hostile client from making each fragment walk thousands of ranges.
const MAX_PIECES: usize = 64;
/// Header protection samples 16 bytes, 4 bytes after the packet number starts
/// (RFC 9001 §5.4.2), as if the packet number were always 4 bytes.
const SAMPLE: Range<usize> = 4..20;

/// What differs between the versions read here.
struct Version {
    number: u32,
    salt: [u8; 20],
    /// HKDF labels of the packet key, IV and header protection key.
    labels: [&'static [u8]; 3],
    /// Long-header type bits of an Initial and of a Retry: v2 permutes them
    /// (RFC 9369 §3.2) so that middleboxes cannot ossify on v1's.
    initial: u8,
    retry: u8,
}

const VERSIONS: [Version; 2] = [
    Version {
        number: 0x0000_0001,
        salt: [
            0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8,
            0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
        ],
        labels: [b"quic key", b"quic iv", b"quic hp"],
        initial: 0b00,
        retry: 0b11,
    },
    Version {
        number: 0x6b33_43cf,
        salt: [
            0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26,
            0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
        ],
        labels: [b"quicv2 key", b"quicv2 iv", b"quicv2 hp"],
        initial: 0b01,
        retry: 0b00,
    },
];

/// Why a datagram cannot be read. Each is a reason the forwarder drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InitialError {
    #[error("not a QUIC Initial packet (a short-header packet, or not QUIC at all)")]
    NotInitial,
    #[error("unsupported QUIC version {0:#010x} (0 is version negotiation)")]
    Version(u32),
    #[error("QUIC Initial packet failed authentication (corrupted, or forged)")]
    Decrypt,
    #[error("malformed QUIC Initial packet: {0}")]
    Malformed(&'static str),
    #[error("no complete ClientHello within max_peek_bytes of QUIC CRYPTO data")]
    TooLarge,
    #[error("QUIC Initial in a datagram shorter than 1200 bytes (RFC 9000 §14.1)")]
    Short,
}

/// One flow's client Initials being read until the ClientHello is whole.
///
/// An error leaves the state consistent, holding what authentic packets
/// brought before it, so the caller may drop just that datagram and keep
/// feeding, or drop the flow.
pub struct ClientInitials {
    crypto: CryptoStream,
    /// The keys of the last destination connection ID seen. A client keeps
    /// the one its Initial keys derive from (RFC 9001 §5.2) until a server
    /// answers, and none does before the flow is routed: one derivation a flow.
    keys: Option<Keys>,
    /// Largest packet number opened, which truncated ones are read against;
    /// `None` until an Initial has opened.
    largest_pn: Option<u64>,
    /// The answer once given, repeated for datagrams fed after it.
    done: Option<Option<HostName>>,
}

impl ClientInitials {
    /// `max_crypto` bounds the CRYPTO stream bytes kept (the forwarder passes
    /// limits.max_peek_bytes, default 16384).
    pub fn new(max_crypto: usize) -> ClientInitials {
        ClientInitials {
            crypto: CryptoStream {
                data: Vec::new(),
                filled: Vec::new(),
                max: max_crypto,
            },
            keys: None,
            largest_pn: None,
            done: None,
        }
    }

    /// Feeds one UDP datagram received from the client.
    /// Ok(Parse::Complete(Some(name)|None)) once the ClientHello is whole (None:
    /// no usable SNI), Ok(Parse::Incomplete) to wait for more datagrams.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<Parse, InitialError> {
        if let Some(name) = &self.done {
            return Ok(Parse::Complete(name.clone()));
        }
        let mut initials = 0;
        let mut rest = datagram;
        // RFC 9000 §12.2: coalesced long-header packets each carry their
        // length. Anything else runs to the end of the datagram: a short-header
        // packet, a Retry, or bytes a client padded the datagram with.
        while rest.first().is_some_and(|b| b & 0x80 != 0) {
            let Some((packet, after)) = long_packet(rest)? else {
                break;
            };
            rest = after;
            // 0-RTT and Handshake packets are the server's to read.
            if !packet.initial {
                continue;
            }
            if datagram.len() < MIN_DATAGRAM {
                return Err(InitialError::Short);
            }
            initials += 1;
            if self.open(&packet)? {
                if let Some(done) = self.read_hello()? {
                    return Ok(done);
                }
            }
        }
        if initials == 0 && self.largest_pn.is_none() {
            return Err(InitialError::NotInitial);
        }
        Ok(Parse::Incomplete)
    }

    /// Opens one Initial and adds its CRYPTO data; true when the contiguous
    /// start of the stream grew.
    fn open(&mut self, packet: &Packet<'_>) -> Result<bool, InitialError> {
        let (version, dcid) = (packet.version, packet.dcid);
        if !self
            .keys
            .as_ref()
            .is_some_and(|k| k.version == version.number && k.dcid == dcid)
        {
            // Derivation fails only on wrong lengths, and these are fixed.
            let keys = Keys::new(version, dcid).map_err(|_| InitialError::Decrypt)?;
            self.keys = Some(keys);
        }
        let keys = self.keys.as_ref().ok_or(InitialError::Decrypt)?;
        let at = packet.pn_offset;
        let mut buf = packet.bytes.to_vec();
        let sample = buf
            .get(at + SAMPLE.start..at + SAMPLE.end)
            .ok_or(InitialError::Malformed("packet too short to sample"))?;
        let mask = keys
            .hp
            .new_mask(sample)
            .map_err(|_| InitialError::Decrypt)?;
        let first = buf.first_mut().ok_or(InitialError::NotInitial)?;
        // A long header protects its low four bits: the reserved bits and the
        // packet number length.
        *first ^= mask[0] & 0x0f;
        let first = *first;
        let pn_len = usize::from(first & 0x03) + 1;
        let mut truncated = 0;
        for (byte, m) in buf.iter_mut().skip(at).take(pn_len).zip(&mask[1..]) {
            *byte ^= m;
            truncated = (truncated << 8) | u64::from(*byte);
        }
        let pn = decode_pn(self.largest_pn, truncated, 8 * pn_len as u32);
        let mut nonce = keys.iv;
        for (n, p) in nonce.iter_mut().skip(4).zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        let (header, payload) = buf
            .split_at_mut_checked(at + pn_len)
            .ok_or(InitialError::Malformed("packet cut short"))?;
        let nonce = Nonce::assume_unique_for_key(nonce);
        let plain = keys.key.open_in_place(nonce, Aad::from(&*header), payload);
        let plain = plain.map_err(|_| InitialError::Decrypt)?;
        // RFC 9000 §17.2, checked only once the packet is authentic so that a
        // forger learns nothing about the header protection.
        if first & 0x0c != 0 {
            return Err(InitialError::Malformed("reserved header bits set"));
        }
        self.largest_pn = Some(self.largest_pn.map_or(pn, |l| l.max(pn)));
        frames(plain, &mut self.crypto)
    }

    /// Runs the ClientHello reader on the contiguous start of the stream.
    fn read_hello(&mut self) -> Result<Option<Parse>, InitialError> {
        match tls::handshake(self.crypto.contiguous()) {
            Ok(Parse::Complete(name)) => {
                self.done = Some(name.clone());
                Ok(Some(Parse::Complete(name)))
            }
            Ok(_) => Ok(None),
            Err(PeekError::Malformed(what) | PeekError::NotTls(what)) => {
                Err(InitialError::Malformed(what))
            }
            Err(_) => Err(InitialError::Malformed("ClientHello")),
        }
    }
}

/// One long-header packet of a datagram, header protection still on.
struct Packet<'a> {
    version: &'static Version,
    initial: bool,
    dcid: &'a [u8],
    /// The whole packet, header to tag.
    bytes: &'a [u8],
    pn_offset: usize,
}

/// The destination connection ID of the client Initial at the start of
/// `datagram`, of a version read here. A client keeps one until the server
/// answers and then takes the server's; an Initial to any other is a new
/// connection (a client that reused its port, a NAT that reused a mapping).
pub fn initial_destination_id(datagram: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = datagram.split_first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let (number, mut r) = rest.split_first_chunk::<4>()?;
    let number = u32::from_be_bytes(*number);
    let version = VERSIONS.iter().find(|v| v.number == number)?;
    if (first >> 4) & 0b11 != version.initial {
        return None;
    }
    connection_id(&mut r).ok()
}

/// The source connection ID of a long-header packet of any version (RFC 8999
/// keeps its place across versions): a server's is the destination its
/// client takes next.
pub fn long_header_source_id(datagram: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = datagram.split_first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let (_, mut r) = rest.split_first_chunk::<4>()?;
    connection_id(&mut r).ok()?;
    connection_id(&mut r).ok()
}

/// Splits the long-header packet at the start of `datagram` from what follows;
/// `None` for a Retry, which has no Length to split by (and which a client
/// never sends).
fn long_packet(datagram: &[u8]) -> Result<Option<(Packet<'_>, &[u8])>, InitialError> {
    let (&first, rest) = datagram.split_first().ok_or(InitialError::NotInitial)?;
    let cut_short = InitialError::Malformed("long header cut short");
    let (number, mut r) = rest.split_first_chunk::<4>().ok_or(cut_short)?;
    let number = u32::from_be_bytes(*number);
    let Some(version) = VERSIONS.iter().find(|v| v.number == number) else {
        return Err(InitialError::Version(number));
    };
    let dcid = connection_id(&mut r)?;
    connection_id(&mut r)?;
    // The fixed bit (0x40) goes unchecked: RFC 9287 lets a client grease it.
    let kind = (first >> 4) & 0b11;
    if kind == version.retry {
        return Ok(None);
    }
    let initial = kind == version.initial;
    if initial {
        let len = varint(&mut r, "token length cut short")?;
        take(&mut r, len, "token runs past the datagram")?;
    }
    let len = varint(&mut r, "packet length cut short")?;
    let pn_offset = datagram.len() - r.len();
    let past_end = InitialError::Malformed("packet length runs past the datagram");
    let (bytes, after) = usize::try_from(len)
        .ok()
        .and_then(|len| datagram.split_at_checked(pn_offset.checked_add(len)?))
        .ok_or(past_end)?;
    let packet = Packet {
        version,
        initial,
        dcid,
        bytes,
        pn_offset,
    };
    Ok(Some((packet, after)))
}

fn connection_id<'a>(r: &mut &'a [u8]) -> Result<&'a [u8], InitialError> {
    let (&len, rest) = r
        .split_first()
        .ok_or(InitialError::Malformed("long header cut short"))?;
    if len > MAX_CID {
        return Err(InitialError::Malformed("connection ID over 20 bytes"));
    }
    *r = rest;
    take(r, len.into(), "connection ID runs past the datagram")
}

/// The first `len` bytes of `r`, consumed; `what` names the failure.
fn take<'a>(r: &mut &'a [u8], len: u64, what: &'static str) -> Result<&'a [u8], InitialError> {
    let (head, rest) = usize::try_from(len)
        .ok()
        .and_then(|len| r.split_at_checked(len))
        .ok_or(InitialError::Malformed(what))?;
    *r = rest;
    Ok(head)
}

/// RFC 9000 §16: a variable-length integer, its length in the top two bits.
fn varint(r: &mut &[u8], what: &'static str) -> Result<u64, InitialError> {
    let &first = r.first().ok_or(InitialError::Malformed(what))?;
    let bytes = take(r, 1 << (first >> 6), what)?;
    Ok(bytes
        .iter()
        .skip(1)
        .fold(u64::from(first & 0x3f), |v, &b| (v << 8) | u64::from(b)))
}

/// Reads past `n` variable-length integers.
fn skip(r: &mut &[u8], n: u64, what: &'static str) -> Result<(), InitialError> {
    for _ in 0..n {
        varint(r, what)?;
    }
    Ok(())
}

/// RFC 9000 Appendix A.3: the packet number nearest the next one expected
/// whose low `bits` are `truncated`.
fn decode_pn(largest: Option<u64>, truncated: u64, bits: u32) -> u64 {
    let expected = largest.map_or(0, |l| l + 1);
    let window = 1u64 << bits;
    let half = window / 2;
    let candidate = (expected & !(window - 1)) | truncated;
    if candidate + half <= expected && candidate < (1 << 62) - window {
        candidate + window
    } else if candidate > expected + half && candidate >= window {
        candidate - window
    } else {
        candidate
    }
}

/// Walks an Initial's frames into the CRYPTO stream; true when the stream's
/// contiguous start grew.
fn frames(mut p: &[u8], crypto: &mut CryptoStream) -> Result<bool, InitialError> {
    if p.is_empty() {
        return Err(InitialError::Malformed("packet without frames"));
    }
    let before = crypto.contiguous().len();
    while !p.is_empty() {
        match varint(&mut p, "frame type cut short")? {
            // PADDING comes in runs of hundreds of bytes.
            0x00 => {
                while let [0, rest @ ..] = p {
                    p = rest;
                }
            }
            0x01 => {} // PING
            ack @ (0x02 | 0x03) => {
                let what = "ACK frame cut short";
                skip(&mut p, 2, what)?; // largest acknowledged, delay
                let ranges = varint(&mut p, what)?;
                // The first range, then a gap and a length per further range:
                // a forged count ends with the packet, each varint a byte at least.
                skip(&mut p, 1 + 2 * ranges, what)?;
                if ack == 0x03 {
                    skip(&mut p, 3, what)?; // ECN counts
                }
            }
            0x06 => {
                let offset = varint(&mut p, "CRYPTO frame cut short")?;
                let len = varint(&mut p, "CRYPTO frame cut short")?;
                let data = take(&mut p, len, "CRYPTO frame runs past the packet")?;
                crypto.insert(offset, data)?;
            }
            0x1c => {
                let what = "CONNECTION_CLOSE frame cut short";
                skip(&mut p, 2, what)?; // error code, frame type
                let len = varint(&mut p, what)?;
                take(&mut p, len, what)?; // reason phrase
            }
            _ => return Err(InitialError::Malformed("frame not allowed in an Initial")),
        }
    }
    Ok(crypto.contiguous().len() > before)
}

/// The CRYPTO stream reassembled by offset: frames may arrive in any order,
/// overlap and repeat, across packets and datagrams.
struct CryptoStream {
    data: Vec<u8>,
    /// The ranges of `data` received: sorted, disjoint and not touching.
    filled: Vec<Range<usize>>,
    max: usize,
}

impl CryptoStream {
    fn insert(&mut self, offset: u64, bytes: &[u8]) -> Result<(), InitialError> {
        let start = usize::try_from(offset).map_err(|_| InitialError::TooLarge)?;
        let end = start
            .checked_add(bytes.len())
            .filter(|&end| end <= self.max)
            .ok_or(InitialError::TooLarge)?;
        if bytes.is_empty() {
            return Ok(());
        }
        // The `n` ranges from `i` on overlap or touch the new one: one range now.
        let i = self.filled.partition_point(|r| r.end < start);
        let after = self.filled.get(i..).unwrap_or_default();
        let n = after.partition_point(|r| r.start <= end);
        if n == 0 && self.filled.len() >= MAX_PIECES {
            return Err(InitialError::Malformed("CRYPTO data in too many pieces"));
        }
        let merged = after.iter().take(n);
        let merged = merged.fold(start..end, |m, r| m.start.min(r.start)..m.end.max(r.end));
        self.filled.splice(i..i + n, [merged]);
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        if let Some(slot) = self.data.get_mut(start..end) {
            slot.copy_from_slice(bytes);
        }
        Ok(())
    }

    /// The stream's bytes from offset 0 up to the first hole.
    fn contiguous(&self) -> &[u8] {
        let len = match self.filled.first() {
            Some(r) if r.start == 0 => r.end,
            _ => 0,
        };
        self.data.get(..len).unwrap_or_default()
    }
}

/// The client's Initial keys for one destination connection ID.
struct Keys {
    version: u32,
    dcid: Vec<u8>,
    key: LessSafeKey,
    iv: [u8; 12],
    hp: HeaderProtectionKey,
}

impl Keys {
    fn new(version: &Version, dcid: &[u8]) -> Result<Keys, Unspecified> {
        let (key, iv, hp) = client_secrets(version, dcid)?;
        Ok(Keys {
            version: version.number,
            dcid: dcid.to_vec(),
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key)?),
            iv,
            hp: HeaderProtectionKey::new(&AES_128, &hp)?,
        })
    }
}

/// A packet key, IV and header protection key.
type Secrets = ([u8; 16], [u8; 12], [u8; 16]);

/// RFC 9001 §5.2 (RFC 9369 §3.3 for v2): the client's Initial secrets for a
/// destination connection ID.
fn client_secrets(version: &Version, dcid: &[u8]) -> Result<Secrets, Unspecified> {
    let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &version.salt).extract(dcid);
    let mut client = [0; 32];
    expand_label(&initial, b"client in", &mut client)?;
    let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &client);
    let (mut key, mut iv, mut hp) = ([0; 16], [0; 12], [0; 16]);
    let [key_label, iv_label, hp_label] = version.labels;
    expand_label(&client, key_label, &mut key)?;
    expand_label(&client, iv_label, &mut iv)?;
    expand_label(&client, hp_label, &mut hp)?;
    Ok((key, iv, hp))
}

/// TLS 1.3's HKDF-Expand-Label (RFC 8446 §7.1) with an empty context,
/// filling `out` (all lengths here are small constants).
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Result<(), Unspecified> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len()))?.fill(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peek::tls::tests::hello_message;

    /// The client Initials of RFC 9001 Appendix A.2 (v1) and RFC 9369
    /// Appendix A.2 (v2), 1,200 bytes each as the RFCs print them; they double
    /// as fuzz seeds. Being authenticated, they open only if every byte is right.
    const RFC9001: &[u8] =
        include_bytes!("../../tests/fuzz/seeds/quic_initial/rfc9001_client_initial");
    const RFC9369: &[u8] =
        include_bytes!("../../tests/fuzz/seeds/quic_initial/rfc9369_client_initial");
    const CHROMIUM: &[u8] = include_bytes!("../../tests/fixtures/hello/chromium.bin");
    const CURL: &[u8] = include_bytes!("../../tests/fixtures/hello/curl.bin");
    const DCID: &[u8] = &[0x5b, 0x1e, 0x0c, 0x7a, 0x3f, 0x91, 0x02, 0xd4];
    const V1: usize = 0;
    const V2: usize = 1;

    fn hex(s: &str) -> Vec<u8> {
        let digit = |i| u8::from_str_radix(&s[i..i + 2], 16).unwrap();
        (0..s.len()).step_by(2).map(digit).collect()
    }

    fn named(name: &str) -> Parse {
        Parse::Complete(HostName::parse(name.as_bytes()))
    }

    /// One datagram on a fresh flow; errors by their metric label.
    fn feed(datagram: &[u8]) -> Result<Parse, &'static str> {
        ClientInitials::new(16384).feed(datagram).map_err(label)
    }

    fn label(e: InitialError) -> &'static str {
        crate::quic::Dropped::of(e).as_str()
    }

    /// A long-header packet from the client with this (unprotected) first
    /// byte and a 2-byte packet number, sealed and header-protected.
    fn protect(version: usize, first: u8, pn: u64, payload: &[u8]) -> Vec<u8> {
        let version = &VERSIONS[version];
        let (key, iv, hp) = client_secrets(version, DCID).unwrap();
        let mut packet = vec![first | 0x01];
        packet.extend(version.number.to_be_bytes());
        packet.extend([&[DCID.len() as u8], DCID, &[3, 0xc1, 0x1e, 0x47]].concat());
        if (first >> 4) & 0b11 == version.initial {
            packet.push(0); // no token
        }
        packet.extend((0x4000 | (2 + payload.len() + 16) as u16).to_be_bytes());
        let at = packet.len();
        packet.extend((pn as u16).to_be_bytes());
        let mut nonce = iv;
        for (n, p) in nonce.iter_mut().skip(4).zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        let (nonce, aad) = (Nonce::assume_unique_for_key(nonce), Aad::from(&packet));
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap());
        let mut body = payload.to_vec();
        let tag = key
            .seal_in_place_separate_tag(nonce, aad, &mut body)
            .unwrap();
        packet.extend([&body, tag.as_ref()].concat());
        let hp = HeaderProtectionKey::new(&AES_128, &hp).unwrap();
        let mask = hp.new_mask(&packet[at + 4..at + 20]).unwrap();
        packet[0] ^= mask[0] & 0x0f;
        packet[at] ^= mask[1];
        packet[at + 1] ^= mask[2];
        packet
    }

    /// An Initial of exactly `size` bytes: `frames`, then PADDING.
    fn initial(version: usize, pn: u64, frames: &[u8], size: usize) -> Vec<u8> {
        // First byte, version, DCID, SCID, token length, length, pn, tag.
        let overhead = 1 + 4 + 1 + DCID.len() + 4 + 1 + 2 + 2 + 16;
        let mut payload = frames.to_vec();
        payload.resize(size.checked_sub(overhead).unwrap(), 0);
        assert!(payload.starts_with(frames), "frames do not fit");
        protect(version, 0xc0 | VERSIONS[version].initial << 4, pn, &payload)
    }

    /// A CRYPTO frame, its varints in their 4-byte form.
    fn crypto(offset: usize, data: &[u8]) -> Vec<u8> {
        let varint = |n: usize| (0x8000_0000 | n as u32).to_be_bytes();
        [&[0x06][..], &varint(offset), &varint(data.len()), data].concat()
    }

    #[test]
    fn rfc9001_a1_and_rfc9369_a1_client_keys() {
        let secrets = |v| client_secrets(&VERSIONS[v], &hex("8394c8f03e515708")).unwrap();
        let (key, iv, hp) = secrets(V1);
        assert_eq!(key[..], hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(iv[..], hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(hp[..], hex("9f50449e04a0e810283a1e9933adedd2"));
        let (key, iv, hp) = secrets(V2);
        assert_eq!(key[..], hex("8b1a0bc121284290a29e0971b5cd045d"));
        assert_eq!(iv[..], hex("91f73e2351d8fa91660e909f"));
        assert_eq!(hp[..], hex("45b95e15235d6f45a6b19cbcb0294ba9"));
    }

    #[test]
    fn rfc9001_a2_and_rfc9369_a2_client_initials_name_example_com() {
        assert_eq!(
            RFC9001[..22],
            hex("c000000001088394c8f03e5157080000449e7b9aec34")
        );
        assert_eq!(
            RFC9369[..22],
            hex("d76b3343cf088394c8f03e5157080000449ea0c95e82")
        );
        let mut flow = ClientInitials::new(16384);
        assert_eq!(flow.feed(RFC9001), Ok(named("example.com")));
        assert_eq!(flow.largest_pn, Some(2));
        assert_eq!(feed(RFC9369), Ok(named("example.com")));
    }

    #[test]
    fn packet_numbers_are_reconstructed_near_the_next_expected() {
        // RFC 9000 Appendix A.3's example, then both wraps of a 1-byte window.
        assert_eq!(decode_pn(Some(0xa82f30ea), 0x9b32, 16), 0xa82f9b32);
        assert_eq!(decode_pn(None, 2, 32), 2);
        assert_eq!(decode_pn(Some(0xfe), 0x01, 8), 0x101);
        assert_eq!(decode_pn(Some(0x101), 0xff, 8), 0xff);
        assert_eq!(decode_pn(Some(0x7f), 0x00, 8), 0x100);
    }

    #[test]
    fn connection_ids_are_read_from_long_headers() {
        assert_eq!(
            initial_destination_id(RFC9001),
            Some(&[0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08][..])
        );
        // RFC 9001 A.2's client Initial has an empty source connection ID.
        assert_eq!(long_header_source_id(RFC9001), Some(&[][..]));
        let packet = initial(V2, 0, &crypto(0, &CURL[5..100]), 1200);
        assert_eq!(initial_destination_id(&packet), Some(DCID));
        assert_eq!(
            long_header_source_id(&packet),
            Some(&[0xc1, 0x1e, 0x47][..])
        );
        let zero_rtt = protect(V1, 0xd0, 1, &[0; 1200]);
        assert_eq!(initial_destination_id(&zero_rtt), None, "0-RTT");
        assert_eq!(
            long_header_source_id(&zero_rtt),
            Some(&[0xc1, 0x1e, 0x47][..])
        );
        assert_eq!(initial_destination_id(&[0x40; 1200]), None, "short header");
        assert_eq!(long_header_source_id(&[0x40; 1200]), None, "short header");
        assert_eq!(initial_destination_id(&RFC9001[..8]), None, "cut short");
    }

    #[test]
    fn keys_follow_each_packets_destination_connection_id() {
        let mut flow = ClientInitials::new(16384);
        let start = initial(V1, 0, &crypto(0, &CURL[5..100]), 1200);
        assert_eq!(flow.feed(&start), Ok(Parse::Incomplete));
        assert_eq!(flow.feed(RFC9001), Ok(named("example.com")));
    }

    #[test]
    fn chromium_hello_over_two_datagrams() {
        let hello = &CHROMIUM[5..];
        assert!(
            hello.len() > 1300,
            "a post-quantum hello spans two datagrams"
        );
        let mut flow = ClientInitials::new(16384);
        let first = initial(V1, 0, &crypto(0, &hello[..1100]), 1200);
        assert_eq!(flow.feed(&first), Ok(Parse::Incomplete));
        let second = initial(V1, 1, &crypto(1100, &hello[1100..]), 1250);
        let want = Ok(named("browser.example.com"));
        assert_eq!(flow.feed(&second), want);
        // A retransmission after the answer gets the same answer.
        assert_eq!(flow.feed(&first), want);
    }

    #[test]
    fn crypto_frames_in_reverse_between_ping_padding_and_acks() {
        let hello = &CURL[5..];
        let mut frames = vec![0x02, 0x00, 0x00, 0x00, 0x00]; // ACK of packet 0
        frames.extend(crypto(50, &hello[50..250])); // overlapped by what follows
        for (i, piece) in hello.chunks(100).enumerate().rev() {
            frames.extend(crypto(i * 100, piece));
            frames.extend([0x01, 0x00, 0x00, 0x01]);
        }
        // ACK with ECN counts: largest 5, one more range, three counts.
        frames.extend([0x03, 0x05, 0x00, 0x01, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00]);
        assert_eq!(
            feed(&initial(V1, 0, &frames, 1200)),
            Ok(named("curl.example.com"))
        );
    }

    #[test]
    fn coalesced_initial_and_zero_rtt() {
        let zero_rtt = protect(V1, 0xd0, 0, &[0xaa; 700]);
        let first = initial(V1, 0, &crypto(0, &CURL[5..]), 600);
        // An Initial, a 0-RTT packet, and zeros a client padded with.
        let datagram = [&first[..], &zero_rtt, &[0; 40]].concat();
        assert_eq!(feed(&datagram), Ok(named("curl.example.com")));
        // The Initial found behind the 0-RTT packet, by the latter's length.
        assert_eq!(
            feed(&[zero_rtt, first].concat()),
            Ok(named("curl.example.com"))
        );
    }

    #[test]
    fn zero_rtt_alone_is_not_initial_until_an_initial_opened() {
        let zero_rtt = protect(V1, 0xd0, 1, &[0xaa; 1200]);
        let mut flow = ClientInitials::new(16384);
        assert_eq!(flow.feed(&zero_rtt), Err(InitialError::NotInitial));
        let start = initial(V1, 0, &crypto(0, &CURL[5..100]), 1200);
        assert_eq!(flow.feed(&start), Ok(Parse::Incomplete));
        assert_eq!(flow.feed(&zero_rtt), Ok(Parse::Incomplete));
    }

    #[test]
    fn garbage_is_not_initial() {
        for garbage in [&b"GET / HTTP/1.1\r\n"[..], &[], &[0x40; 1200]] {
            assert_eq!(feed(garbage), Err("not_initial"));
        }
    }

    #[test]
    fn a_flipped_bit_fails_to_decrypt() {
        for at in [20, 40, 600, RFC9001.len() - 1] {
            let mut packet = RFC9001.to_vec();
            packet[at] ^= 0x10;
            assert_eq!(feed(&packet), Err("decrypt"), "bit flipped at {at}");
        }
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut packet = RFC9001.to_vec();
        for version in [0xff00_001d, 0] {
            packet[1..5].copy_from_slice(&u32::to_be_bytes(version));
            let err = ClientInitials::new(16384).feed(&packet).unwrap_err();
            assert_eq!(
                (err, label(err)),
                (InitialError::Version(version), "version")
            );
        }
    }

    #[test]
    fn an_initial_in_1199_bytes_is_short() {
        let frames = crypto(0, &CURL[5..]);
        assert_eq!(feed(&initial(V1, 0, &frames, 1199)), Err("short"));
        assert_eq!(
            feed(&initial(V1, 0, &frames, 1200)),
            Ok(named("curl.example.com"))
        );
    }

    #[test]
    fn crypto_data_beyond_the_bound_is_too_large() {
        let hello = &CHROMIUM[5..];
        let first = initial(V1, 0, &crypto(0, &hello[..1100]), 1200);
        assert_eq!(
            ClientInitials::new(1099).feed(&first),
            Err(InitialError::TooLarge)
        );
        let mut flow = ClientInitials::new(1100);
        assert_eq!(flow.feed(&first), Ok(Parse::Incomplete));
        let second = initial(V1, 1, &crypto(1100, &hello[1100..]), 1250);
        assert_eq!(flow.feed(&second).map_err(label), Err("too_large"));
    }

    #[test]
    fn v2_through_the_encryptor() {
        let frames = crypto(0, &CURL[5..]);
        assert_eq!(
            feed(&initial(V2, 7, &frames, 1200)),
            Ok(named("curl.example.com"))
        );
        // v1's Initial type bits are v2's Retry.
        assert_eq!(feed(&protect(V2, 0xc0, 7, &[0; 1200])), Err("not_initial"));
    }

    #[test]
    fn malformed_packets_and_frames() {
        // A STREAM frame has no place in an Initial.
        assert_eq!(feed(&initial(V1, 0, &[0x08, 0, 0], 1200)), Err("malformed"));
        // A CRYPTO stream that opens with a ServerHello.
        let server_hello = crypto(0, &[2, 0, 0, 0]);
        assert_eq!(feed(&initial(V1, 0, &server_hello, 1200)), Err("malformed"));
        // Reserved header bits set under the header protection.
        let reserved = protect(V1, 0xcc, 0, &[0x01; 1200]);
        assert_eq!(feed(&reserved), Err("malformed"));
        // A CRYPTO stream in more pieces than are kept.
        let holes: Vec<u8> = (0..=MAX_PIECES)
            .flat_map(|i| crypto(2 * i + 1, &[0]))
            .collect();
        assert_eq!(feed(&initial(V1, 0, &holes, 1200)), Err("malformed"));
        // A 21-byte destination connection ID.
        let mut packet = RFC9001.to_vec();
        packet[5] = 21;
        assert_eq!(feed(&packet), Err("malformed"));
        // A Length past the end of the datagram.
        assert_eq!(feed(&RFC9001[..1199]), Err("malformed"));
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// A ClientHello cut into CRYPTO fragments that overlap and repeat,
            /// sent in any order over any number of packets: Incomplete while
            /// a byte is missing, then the name the bare stream reader finds
            /// in the whole message.
            #[test]
            fn any_fragments_in_any_order_over_any_packets(
                which in 0usize..3,
                name in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,20}){0,3}",
                cuts in vec(1usize..400, 0..20),
                overlaps in vec(0usize..50, 21),
                repeats in vec(any::<bool>(), 21),
                order in vec(any::<u32>(), 42),
                breaks in vec(any::<bool>(), 42),
            ) {
                let built = hello_message(&[(0, name.as_bytes())]);
                let message = [&CHROMIUM[5..], &CURL[5..], &built][which];
                let want = tls::handshake(message).unwrap();
                let mut fragments = Vec::new();
                let (mut start, mut cuts) = (0, cuts.into_iter());
                for i in 0.. {
                    let end = cuts.next().map_or(usize::MAX, |cut| start + cut).min(message.len());
                    let fragment = start.saturating_sub(overlaps[i])..end;
                    fragments.extend(std::iter::repeat_n(fragment, 1 + repeats[i] as usize));
                    start = end;
                    if end == message.len() {
                        break;
                    }
                }
                let mut fragments: Vec<_> = fragments.into_iter().zip(order).collect();
                fragments.sort_by_key(|&(_, key)| key);
                let mut flow = ClientInitials::new(16384);
                let mut have = vec![false; message.len()];
                let mut frames = Vec::new();
                for (i, (fragment, _)) in fragments.iter().enumerate() {
                    frames.extend(crypto(fragment.start, &message[fragment.clone()]));
                    frames.push(0x01); // PING
                    have[fragment.clone()].fill(true);
                    if !breaks[i] && i + 1 < fragments.len() {
                        continue; // more frames for this packet
                    }
                    let size = 1200.max(frames.len() + 100);
                    let got = flow.feed(&initial(V1, i as u64, &frames, size));
                    frames.clear();
                    if have.iter().all(|&b| b) {
                        prop_assert_eq!(got, Ok(want));
                        return Ok(());
                    }
                    prop_assert_eq!(got, Ok(Parse::Incomplete));
                }
                prop_assert!(false, "the whole hello was never sent");
            }
        }
    }
}
