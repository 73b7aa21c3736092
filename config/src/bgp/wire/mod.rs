//! BGP-4 wire format: typed messages that parse from and emit to bytes, round-tripping.
//!
//! Parsing never panics; every malformed input yields a [`WireError`] carrying the
//! NOTIFICATION code, subcode and data RFC 4271 §6 (and RFC 4760/6793/5492) prescribe, so the
//! session can send it as is. Emission writes what was parsed byte for byte (attribute flags,
//! the grouping of capabilities into optional parameters and prefix host bits are kept), except
//! that an attribute longer than 255 octets always gets the extended-length flag.
//!
//! Encoding depends on the session in one place: AS numbers in AS_PATH and AGGREGATOR are 2 or
//! 4 octets depending on whether both sides announced the 4-octet AS capability
//! ([`WireContext::four_octet_as`]).

mod attr;
pub mod code;
mod nlri;
mod notification;
mod open;
mod update;

pub use attr::*;
pub use code::{NotificationCode, WireError, describe};
pub use nlri::*;
pub use notification::*;
pub use open::*;
pub use update::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Length of the fixed header (marker, length, type).
pub const HEADER_LEN: usize = 19;
/// Largest message RFC 4271 allows (without RFC 8654 extended messages).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The AS number put in 2-octet fields for a 4-octet AS (RFC 6793).
pub const AS_TRANS: u16 = 23456;

pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
pub const SAFI_UNICAST: u8 = 1;

/// What the encoding of a message depends on, fixed once the OPENs are exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireContext {
    /// Both sides announced the 4-octet AS capability: AS_PATH/AGGREGATOR carry 4-octet ASNs.
    pub four_octet_as: bool,
}

impl WireContext {
    pub const FOUR_OCTET: WireContext = WireContext {
        four_octet_as: true,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

pub const TYPE_OPEN: u8 = 1;
pub const TYPE_UPDATE: u8 = 2;
pub const TYPE_NOTIFICATION: u8 = 3;
pub const TYPE_KEEPALIVE: u8 = 4;
pub const TYPE_ROUTE_REFRESH: u8 = 5;

/// Checks the header at the start of `buf` and returns the whole message's length, or `None`
/// when fewer than that many bytes are available yet (the framing step of a TCP reader).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < HEADER_LEN {
        // Reject a wrong marker early, before waiting for the rest.
        if buf.iter().take(16).any(|b| *b != 0xff) {
            return Err(not_synchronized());
        }
        return Ok(None);
    }
    let (len, _) = check_header(buf)?;
    Ok((buf.len() >= len).then_some(len))
}

fn not_synchronized() -> WireError {
    WireError::new(
        code::HEADER,
        code::CONNECTION_NOT_SYNCHRONIZED,
        vec![],
        "marker is not all ones",
    )
}

/// Validates marker, length and type; returns the length.
/// The message types of RFC 4271 §4.1 and RFC 2918.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Open,
    Update,
    Notification,
    Keepalive,
    RouteRefresh,
}

impl MessageType {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            TYPE_OPEN => MessageType::Open,
            TYPE_UPDATE => MessageType::Update,
            TYPE_NOTIFICATION => MessageType::Notification,
            TYPE_KEEPALIVE => MessageType::Keepalive,
            TYPE_ROUTE_REFRESH => MessageType::RouteRefresh,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            MessageType::Open => TYPE_OPEN,
            MessageType::Update => TYPE_UPDATE,
            MessageType::Notification => TYPE_NOTIFICATION,
            MessageType::Keepalive => TYPE_KEEPALIVE,
            MessageType::RouteRefresh => TYPE_ROUTE_REFRESH,
        }
    }
}

/// Checks the header; returns the message length and type.
fn check_header(buf: &[u8]) -> Result<(usize, MessageType), WireError> {
    if buf[..16].iter().any(|b| *b != 0xff) {
        return Err(not_synchronized());
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    let kind = buf[18];
    let bad_len = || {
        WireError::new(
            code::HEADER,
            code::BAD_MESSAGE_LENGTH,
            (len as u16).to_be_bytes().to_vec(),
            "message length out of range for its type",
        )
    };
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(bad_len());
    }
    let Some(kind) = MessageType::from_code(kind) else {
        return Err(WireError::new(
            code::HEADER,
            code::BAD_MESSAGE_TYPE,
            vec![kind],
            "unknown message type",
        ));
    };
    let ok = match kind {
        MessageType::Open => len >= 29,
        MessageType::Update => len >= 23,
        MessageType::Notification => len >= 21,
        MessageType::Keepalive => len == 19,
        MessageType::RouteRefresh => len == 23,
    };
    if !ok {
        return Err(bad_len());
    }
    Ok((len, kind))
}

impl Message {
    /// Parses one message from the start of `buf`; returns it and the bytes it used.
    /// A `buf` shorter than the header's length field is a bad-length error: use [`frame_len`]
    /// to frame a stream.
    pub fn parse(buf: &[u8], ctx: WireContext) -> Result<(Message, usize), WireError> {
        Self::parse_with(buf, ctx, false).map(|(m, len, _)| (m, len))
    }

    /// Parses a message received from a peer with the revised UPDATE error handling of
    /// RFC 7606: a malformed attribute makes the UPDATE withdraw its routes, or is dropped,
    /// instead of closing the session; each such fault is returned for logging and counting.
    /// Errors that still require a session reset (framing, NLRI, MP_REACH/MP_UNREACH) are
    /// `Err` as in [`Message::parse`].
    pub fn parse_received(
        buf: &[u8],
        ctx: WireContext,
    ) -> Result<(Message, usize, Vec<AttrFault>), WireError> {
        Self::parse_with(buf, ctx, true)
    }

    fn parse_with(
        buf: &[u8],
        ctx: WireContext,
        lenient: bool,
    ) -> Result<(Message, usize, Vec<AttrFault>), WireError> {
        let mut faults = Vec::new();
        if buf.len() < HEADER_LEN {
            if buf.len() >= 16 && buf[..16].iter().any(|b| *b != 0xff) {
                return Err(not_synchronized());
            }
            return Err(WireError::new(
                code::HEADER,
                code::BAD_MESSAGE_LENGTH,
                (buf.len() as u16).to_be_bytes().to_vec(),
                "truncated header",
            ));
        }
        let (len, kind) = check_header(buf)?;
        if buf.len() < len {
            return Err(WireError::new(
                code::HEADER,
                code::BAD_MESSAGE_LENGTH,
                (len as u16).to_be_bytes().to_vec(),
                "message shorter than its length field",
            ));
        }
        let body = &buf[HEADER_LEN..len];
        let msg = match kind {
            MessageType::Open => Message::Open(Open::parse(body)?),
            MessageType::Update => {
                let (update, found) = Update::parse_faults(body, ctx)?;
                if let Some(first) = found.first()
                    && !lenient
                {
                    return Err(first.error.clone());
                }
                faults = found;
                Message::Update(update)
            }
            MessageType::Notification => Message::Notification(Notification {
                code: body[0],
                subcode: body[1],
                data: body[2..].to_vec(),
            }),
            MessageType::Keepalive => Message::Keepalive,
            MessageType::RouteRefresh => Message::RouteRefresh(RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                subtype: body[2],
                safi: body[3],
            }),
        };
        Ok((msg, len, faults))
    }

    /// Appends the encoded message to `out`. Fails only when it would exceed 4096 octets.
    pub fn emit(&self, ctx: WireContext, out: &mut Vec<u8>) -> Result<(), EmitError> {
        let start = out.len();
        out.extend_from_slice(&[0xff; 16]);
        out.extend_from_slice(&[0, 0]);
        match self {
            Message::Open(open) => {
                out.push(TYPE_OPEN);
                open.emit_body(out)?;
            }
            Message::Update(update) => {
                out.push(TYPE_UPDATE);
                update.emit_body(ctx, out)?;
            }
            Message::Notification(n) => {
                out.push(TYPE_NOTIFICATION);
                out.push(n.code);
                out.push(n.subcode);
                out.extend_from_slice(&n.data);
            }
            Message::Keepalive => out.push(TYPE_KEEPALIVE),
            Message::RouteRefresh(r) => {
                out.push(TYPE_ROUTE_REFRESH);
                out.extend_from_slice(&r.afi.to_be_bytes());
                out.push(r.subtype);
                out.push(r.safi);
            }
        }
        let len = out.len() - start;
        if len > MAX_MESSAGE_LEN {
            out.truncate(start);
            return Err(EmitError::TooLong(len));
        }
        out[start + 16..start + 18].copy_from_slice(&(len as u16).to_be_bytes());
        Ok(())
    }

    /// Convenience: the encoded message as a new vector.
    pub fn to_bytes(&self, ctx: WireContext) -> Result<Vec<u8>, EmitError> {
        let mut out = Vec::new();
        self.emit(ctx, &mut out)?;
        Ok(out)
    }

    /// The message type's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("message of {0} octets exceeds the 4096-octet limit")]
    TooLong(usize),
    #[error("a field does not fit its length octet")]
    FieldTooLong,
}

/// Decodes a hex string (whitespace ignored); for fixtures and tests.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}

/// Encodes bytes as lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests;
