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

/// NOTIFICATION error codes (RFC 4271 §4.5) and the subcodes we use.
pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;

    // Message header error subcodes.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;

    // OPEN message error subcodes.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;

    // UPDATE message error subcodes.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    pub const INVALID_ORIGIN: u8 = 6;
    pub const INVALID_NEXT_HOP: u8 = 8;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;

    // FSM error subcodes (RFC 6608).
    pub const FSM_UNEXPECTED_IN_OPENSENT: u8 = 1;
    pub const FSM_UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;

    // Cease subcodes (RFC 4486).
    pub const CEASE_ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const CEASE_PEER_DECONFIGURED: u8 = 3;
    pub const CEASE_ADMINISTRATIVE_RESET: u8 = 4;
    pub const CEASE_CONNECTION_REJECTED: u8 = 5;
}

/// A protocol error: what to put in the NOTIFICATION that closes the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BGP {} (code {code}, subcode {subcode}): {reason}", describe(*.code, *.subcode))]
pub struct WireError {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
    /// A human-readable detail for logs; not sent.
    pub reason: &'static str,
}

impl WireError {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>, reason: &'static str) -> Self {
        Self {
            code,
            subcode,
            data,
            reason,
        }
    }

    /// The NOTIFICATION reporting this error.
    pub fn notification(&self) -> Notification {
        Notification {
            code: self.code,
            subcode: self.subcode,
            data: self.data.clone(),
        }
    }
}

/// A short name for a NOTIFICATION code/subcode, for logs and status.
pub fn describe(code: u8, subcode: u8) -> &'static str {
    use code::*;
    match (code, subcode) {
        (HEADER, CONNECTION_NOT_SYNCHRONIZED) => "connection not synchronized",
        (HEADER, BAD_MESSAGE_LENGTH) => "bad message length",
        (HEADER, BAD_MESSAGE_TYPE) => "bad message type",
        (HEADER, _) => "message header error",
        (OPEN, UNSUPPORTED_VERSION) => "unsupported version number",
        (OPEN, BAD_PEER_AS) => "bad peer AS",
        (OPEN, BAD_BGP_IDENTIFIER) => "bad BGP identifier",
        (OPEN, UNSUPPORTED_OPTIONAL_PARAMETER) => "unsupported optional parameter",
        (OPEN, UNACCEPTABLE_HOLD_TIME) => "unacceptable hold time",
        (OPEN, UNSUPPORTED_CAPABILITY) => "unsupported capability",
        (OPEN, _) => "OPEN message error",
        (UPDATE, MALFORMED_ATTRIBUTE_LIST) => "malformed attribute list",
        (UPDATE, UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE) => "unrecognized well-known attribute",
        (UPDATE, MISSING_WELL_KNOWN_ATTRIBUTE) => "missing well-known attribute",
        (UPDATE, ATTRIBUTE_FLAGS_ERROR) => "attribute flags error",
        (UPDATE, ATTRIBUTE_LENGTH_ERROR) => "attribute length error",
        (UPDATE, INVALID_ORIGIN) => "invalid ORIGIN attribute",
        (UPDATE, INVALID_NEXT_HOP) => "invalid NEXT_HOP attribute",
        (UPDATE, OPTIONAL_ATTRIBUTE_ERROR) => "optional attribute error",
        (UPDATE, INVALID_NETWORK_FIELD) => "invalid network field",
        (UPDATE, MALFORMED_AS_PATH) => "malformed AS_PATH",
        (UPDATE, _) => "UPDATE message error",
        (HOLD_TIMER_EXPIRED, _) => "hold timer expired",
        (FSM, _) => "finite state machine error",
        (CEASE, CEASE_ADMINISTRATIVE_SHUTDOWN) => "cease: administrative shutdown",
        (CEASE, CEASE_PEER_DECONFIGURED) => "cease: peer de-configured",
        (CEASE, CEASE_ADMINISTRATIVE_RESET) => "cease: administrative reset",
        (CEASE, CEASE_CONNECTION_REJECTED) => "cease: connection rejected",
        (CEASE, _) => "cease",
        _ => "unknown error code",
    }
}

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
    let len = check_header(buf)?;
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
fn check_header(buf: &[u8]) -> Result<usize, WireError> {
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
    let ok = match kind {
        TYPE_OPEN => len >= 29,
        TYPE_UPDATE => len >= 23,
        TYPE_NOTIFICATION => len >= 21,
        TYPE_KEEPALIVE => len == 19,
        TYPE_ROUTE_REFRESH => len == 23,
        _ => {
            return Err(WireError::new(
                code::HEADER,
                code::BAD_MESSAGE_TYPE,
                vec![kind],
                "unknown message type",
            ));
        }
    };
    if !ok {
        return Err(bad_len());
    }
    Ok(len)
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
        let len = check_header(buf)?;
        if buf.len() < len {
            return Err(WireError::new(
                code::HEADER,
                code::BAD_MESSAGE_LENGTH,
                (len as u16).to_be_bytes().to_vec(),
                "message shorter than its length field",
            ));
        }
        let body = &buf[HEADER_LEN..len];
        let msg = match buf[18] {
            TYPE_OPEN => Message::Open(Open::parse(body)?),
            TYPE_UPDATE => {
                let (update, found) = Update::parse_faults(body, ctx)?;
                if let Some(first) = found.first()
                    && !lenient
                {
                    return Err(first.error.clone());
                }
                faults = found;
                Message::Update(update)
            }
            TYPE_NOTIFICATION => Message::Notification(Notification {
                code: body[0],
                subcode: body[1],
                data: body[2..].to_vec(),
            }),
            TYPE_KEEPALIVE => Message::Keepalive,
            TYPE_ROUTE_REFRESH => Message::RouteRefresh(RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                subtype: body[2],
                safi: body[3],
            }),
            _ => unreachable!("check_header accepts only known types"),
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

// ---------------------------------------------------------------------------------------------
// OPEN

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-octet "My Autonomous System" field (AS_TRANS when the real AS needs 4 octets).
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub params: Vec<OptParam>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptParam {
    /// Optional parameter type 2 (RFC 5492); peers group capabilities differently.
    Capabilities(Vec<Capability>),
}

pub const CAP_MULTIPROTOCOL: u8 = 1;
pub const CAP_ROUTE_REFRESH: u8 = 2;
pub const CAP_GRACEFUL_RESTART: u8 = 64;
pub const CAP_FOUR_OCTET_AS: u8 = 65;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// RFC 4760: AFI, SAFI (the reserved octet is kept for round-tripping).
    Multiprotocol { afi: u16, reserved: u8, safi: u8 },
    /// RFC 2918.
    RouteRefresh,
    /// RFC 4724: restart flags (4 bits) and time (12 bits), per-family forwarding-state flags.
    GracefulRestart {
        flags: u8,
        time: u16,
        families: Vec<GrFamily>,
    },
    /// RFC 6793.
    FourOctetAs(u32),
    /// Anything else, kept as is.
    Unknown { code: u8, value: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrFamily {
    pub afi: u16,
    pub safi: u8,
    pub flags: u8,
}

/// The restart-state bit ("R") of the graceful restart capability.
pub const GR_RESTART_STATE: u8 = 0x8;
/// Forwarding state preserved, per family.
pub const GR_FORWARDING: u8 = 0x80;

impl Open {
    fn parse(body: &[u8]) -> Result<Open, WireError> {
        let version = body[0];
        if version != 4 {
            return Err(WireError::new(
                code::OPEN,
                code::UNSUPPORTED_VERSION,
                4u16.to_be_bytes().to_vec(),
                "only BGP version 4 is supported",
            ));
        }
        let my_as = u16::from_be_bytes([body[1], body[2]]);
        let hold_time = u16::from_be_bytes([body[3], body[4]]);
        let bgp_id = Ipv4Addr::new(body[5], body[6], body[7], body[8]);
        let opt_len = body[9] as usize;
        let malformed = || {
            WireError::new(
                code::HEADER,
                code::BAD_MESSAGE_LENGTH,
                ((body.len() + HEADER_LEN) as u16).to_be_bytes().to_vec(),
                "OPEN optional parameters length disagrees with the message length",
            )
        };
        if 10 + opt_len != body.len() {
            return Err(malformed());
        }
        let mut rest = &body[10..];
        let mut params = Vec::new();
        while !rest.is_empty() {
            if rest.len() < 2 {
                return Err(malformed_param());
            }
            let (kind, len) = (rest[0], rest[1] as usize);
            let value = rest.get(2..2 + len).ok_or_else(malformed_param)?;
            rest = &rest[2 + len..];
            if kind != 2 {
                return Err(WireError::new(
                    code::OPEN,
                    code::UNSUPPORTED_OPTIONAL_PARAMETER,
                    vec![],
                    "optional parameter other than capabilities",
                ));
            }
            params.push(OptParam::Capabilities(parse_capabilities(value)?));
        }
        Ok(Open {
            version,
            my_as,
            hold_time,
            bgp_id,
            params,
        })
    }

    fn emit_body(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        out.push(self.version);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let len_at = out.len();
        out.push(0);
        for OptParam::Capabilities(caps) in &self.params {
            out.push(2);
            let plen_at = out.len();
            out.push(0);
            for cap in caps {
                cap.emit(out)?;
            }
            let plen = out.len() - plen_at - 1;
            out[plen_at] = u8::try_from(plen).map_err(|_| EmitError::FieldTooLong)?;
        }
        let olen = out.len() - len_at - 1;
        out[len_at] = u8::try_from(olen).map_err(|_| EmitError::FieldTooLong)?;
        Ok(())
    }

    /// All capabilities, whatever parameter they came in.
    pub fn capabilities(&self) -> impl Iterator<Item = &Capability> {
        self.params
            .iter()
            .flat_map(|OptParam::Capabilities(c)| c.iter())
    }

    /// The sender's AS: the 4-octet capability's if present, else the 2-octet field.
    pub fn peer_as(&self) -> u32 {
        self.capabilities()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(self.my_as as u32)
    }
}

fn malformed_param() -> WireError {
    // RFC 4271 leaves this to "OPEN message error"; RFC 5492 implementations use subcode 0.
    WireError::new(
        code::OPEN,
        0,
        vec![],
        "malformed optional parameter or capability",
    )
}

fn parse_capabilities(mut rest: &[u8]) -> Result<Vec<Capability>, WireError> {
    let mut caps = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 2 {
            return Err(malformed_param());
        }
        let (code, len) = (rest[0], rest[1] as usize);
        let v = rest.get(2..2 + len).ok_or_else(malformed_param)?;
        rest = &rest[2 + len..];
        let cap = match (code, len) {
            (CAP_MULTIPROTOCOL, 4) => Capability::Multiprotocol {
                afi: u16::from_be_bytes([v[0], v[1]]),
                reserved: v[2],
                safi: v[3],
            },
            (CAP_ROUTE_REFRESH, 0) => Capability::RouteRefresh,
            (CAP_FOUR_OCTET_AS, 4) => {
                Capability::FourOctetAs(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            }
            (CAP_GRACEFUL_RESTART, n) if n >= 2 && (n - 2).is_multiple_of(4) => {
                Capability::GracefulRestart {
                    flags: v[0] >> 4,
                    time: u16::from_be_bytes([v[0] & 0x0f, v[1]]),
                    families: v[2..]
                        .chunks_exact(4)
                        .map(|f| GrFamily {
                            afi: u16::from_be_bytes([f[0], f[1]]),
                            safi: f[2],
                            flags: f[3],
                        })
                        .collect(),
                }
            }
            (
                CAP_MULTIPROTOCOL | CAP_ROUTE_REFRESH | CAP_FOUR_OCTET_AS | CAP_GRACEFUL_RESTART,
                _,
            ) => {
                return Err(malformed_param());
            }
            _ => Capability::Unknown {
                code,
                value: v.to_vec(),
            },
        };
        caps.push(cap);
    }
    Ok(caps)
}

impl Capability {
    /// Encodes the capability (code, length, value).
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        match self {
            Capability::Multiprotocol {
                afi,
                reserved,
                safi,
            } => {
                out.extend_from_slice(&[CAP_MULTIPROTOCOL, 4]);
                out.extend_from_slice(&afi.to_be_bytes());
                out.extend_from_slice(&[*reserved, *safi]);
            }
            Capability::RouteRefresh => out.extend_from_slice(&[CAP_ROUTE_REFRESH, 0]),
            Capability::FourOctetAs(asn) => {
                out.extend_from_slice(&[CAP_FOUR_OCTET_AS, 4]);
                out.extend_from_slice(&asn.to_be_bytes());
            }
            Capability::GracefulRestart {
                flags,
                time,
                families,
            } => {
                let len =
                    u8::try_from(2 + 4 * families.len()).map_err(|_| EmitError::FieldTooLong)?;
                out.extend_from_slice(&[CAP_GRACEFUL_RESTART, len]);
                out.push((flags << 4) | ((time >> 8) as u8 & 0x0f));
                out.push(*time as u8);
                for f in families {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.extend_from_slice(&[f.safi, f.flags]);
                }
            }
            Capability::Unknown { code, value } => {
                out.push(*code);
                out.push(u8::try_from(value.len()).map_err(|_| EmitError::FieldTooLong)?);
                out.extend_from_slice(value);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// NOTIFICATION, ROUTE-REFRESH

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Self {
        Self {
            code,
            subcode,
            data: vec![],
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}/{})",
            describe(self.code, self.subcode),
            self.code,
            self.subcode
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: u16,
    /// Reserved octet (RFC 2918) or message subtype (RFC 7313).
    pub subtype: u8,
    pub safi: u8,
}

// ---------------------------------------------------------------------------------------------
// UPDATE

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attributes: Vec<PathAttribute>,
    pub nlri: Vec<Ipv4Net>,
}

/// A path attribute with its flags as received (optional, transitive, partial, extended length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathAttribute {
    pub flags: u8,
    pub value: Attr,
}

pub const FLAG_OPTIONAL: u8 = 0x80;
pub const FLAG_TRANSITIVE: u8 = 0x40;
pub const FLAG_PARTIAL: u8 = 0x20;
pub const FLAG_EXTENDED_LENGTH: u8 = 0x10;

pub const ATTR_ORIGIN: u8 = 1;
pub const ATTR_AS_PATH: u8 = 2;
pub const ATTR_NEXT_HOP: u8 = 3;
pub const ATTR_MED: u8 = 4;
pub const ATTR_LOCAL_PREF: u8 = 5;
pub const ATTR_ATOMIC_AGGREGATE: u8 = 6;
pub const ATTR_AGGREGATOR: u8 = 7;
pub const ATTR_COMMUNITIES: u8 = 8;
pub const ATTR_MP_REACH: u8 = 14;
pub const ATTR_MP_UNREACH: u8 = 15;
pub const ATTR_EXTENDED_COMMUNITIES: u8 = 16;
pub const ATTR_AS4_PATH: u8 = 17;
pub const ATTR_AS4_AGGREGATOR: u8 = 18;
pub const ATTR_LARGE_COMMUNITIES: u8 = 32;

pub const ORIGIN_IGP: u8 = 0;
pub const ORIGIN_EGP: u8 = 1;
pub const ORIGIN_INCOMPLETE: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    Origin(u8),
    AsPath(Vec<AsSegment>),
    NextHop(Ipv4Addr),
    Med(u32),
    LocalPref(u32),
    AtomicAggregate,
    Aggregator {
        asn: u32,
        addr: Ipv4Addr,
    },
    Communities(Vec<u32>),
    MpReach(MpReach),
    MpUnreach(MpUnreach),
    ExtendedCommunities(Vec<u64>),
    /// RFC 6793: the real path when a 2-octet AS_PATH carries AS_TRANS.
    As4Path(Vec<AsSegment>),
    As4Aggregator {
        asn: u32,
        addr: Ipv4Addr,
    },
    LargeCommunities(Vec<LargeCommunity>),
    /// An attribute we do not interpret (optional ones are kept and can be passed on).
    Unknown {
        type_code: u8,
        value: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

impl std::fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.global, self.local1, self.local2)
    }
}

pub const AS_SET: u8 = 1;
pub const AS_SEQUENCE: u8 = 2;
pub const AS_CONFED_SEQUENCE: u8 = 3;
pub const AS_CONFED_SET: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsSegment {
    pub kind: u8,
    pub asns: Vec<u32>,
}

/// MP_REACH_NLRI for IPv4/IPv6 unicast (other families are kept as [`Attr::Unknown`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub afi: u16,
    pub safi: u8,
    /// One address, or for IPv6 a global and a link-local one (RFC 2545). An IPv4 family may
    /// carry an IPv6 next hop (RFC 8950).
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    pub afi: u16,
    pub safi: u8,
    pub withdrawn: Vec<IpNet>,
}

impl Attr {
    pub fn type_code(&self) -> u8 {
        match self {
            Attr::Origin(_) => ATTR_ORIGIN,
            Attr::AsPath(_) => ATTR_AS_PATH,
            Attr::NextHop(_) => ATTR_NEXT_HOP,
            Attr::Med(_) => ATTR_MED,
            Attr::LocalPref(_) => ATTR_LOCAL_PREF,
            Attr::AtomicAggregate => ATTR_ATOMIC_AGGREGATE,
            Attr::Aggregator { .. } => ATTR_AGGREGATOR,
            Attr::Communities(_) => ATTR_COMMUNITIES,
            Attr::MpReach(_) => ATTR_MP_REACH,
            Attr::MpUnreach(_) => ATTR_MP_UNREACH,
            Attr::ExtendedCommunities(_) => ATTR_EXTENDED_COMMUNITIES,
            Attr::As4Path(_) => ATTR_AS4_PATH,
            Attr::As4Aggregator { .. } => ATTR_AS4_AGGREGATOR,
            Attr::LargeCommunities(_) => ATTR_LARGE_COMMUNITIES,
            Attr::Unknown { type_code, .. } => *type_code,
        }
    }
}

/// The flags RFC 4271/4760/1997/8092/6793 prescribe for a type code (optional and transitive
/// bits), or `None` for types we do not know.
pub fn well_known_flags(type_code: u8) -> Option<u8> {
    Some(match type_code {
        ATTR_ORIGIN | ATTR_AS_PATH | ATTR_NEXT_HOP | ATTR_LOCAL_PREF | ATTR_ATOMIC_AGGREGATE => {
            FLAG_TRANSITIVE
        }
        ATTR_MED | ATTR_MP_REACH | ATTR_MP_UNREACH => FLAG_OPTIONAL,
        ATTR_AGGREGATOR
        | ATTR_COMMUNITIES
        | ATTR_EXTENDED_COMMUNITIES
        | ATTR_AS4_PATH
        | ATTR_AS4_AGGREGATOR
        | ATTR_LARGE_COMMUNITIES => FLAG_OPTIONAL | FLAG_TRANSITIVE,
        _ => return None,
    })
}

impl PathAttribute {
    /// An attribute with the flags its type prescribes.
    pub fn new(value: Attr) -> Self {
        let flags = well_known_flags(value.type_code()).unwrap_or(FLAG_OPTIONAL | FLAG_TRANSITIVE);
        Self { flags, value }
    }
}

impl Update {
    /// The End-of-RIB marker (RFC 4724): an empty UPDATE for IPv4 unicast, an empty
    /// MP_UNREACH_NLRI for other families.
    pub fn end_of_rib(afi: u16, safi: u8) -> Update {
        if (afi, safi) == (AFI_IPV4, SAFI_UNICAST) {
            Update::default()
        } else {
            Update {
                attributes: vec![PathAttribute::new(Attr::MpUnreach(MpUnreach {
                    afi,
                    safi,
                    withdrawn: vec![],
                }))],
                ..Update::default()
            }
        }
    }

    /// The family this UPDATE is the End-of-RIB marker for, if it is one.
    pub fn is_end_of_rib(&self) -> Option<(u16, u8)> {
        if self.withdrawn.is_empty() && self.nlri.is_empty() {
            match self.attributes.as_slice() {
                [] => return Some((AFI_IPV4, SAFI_UNICAST)),
                [
                    PathAttribute {
                        value: Attr::MpUnreach(m),
                        ..
                    },
                ] if m.withdrawn.is_empty() => {
                    return Some((m.afi, m.safi));
                }
                _ => {}
            }
        }
        None
    }

    pub fn attr(&self, type_code: u8) -> Option<&Attr> {
        self.attributes
            .iter()
            .map(|a| &a.value)
            .find(|a| a.type_code() == type_code)
    }

    /// Parses an UPDATE, applying RFC 7606 to malformed attributes: the result has the
    /// faults found, in order, and, when one of them is treat-as-withdraw, the routes of
    /// the UPDATE turned into withdrawals. `Err` for the errors RFC 7606 still answers with
    /// a session reset.
    fn parse_faults(body: &[u8], ctx: WireContext) -> Result<(Update, Vec<AttrFault>), WireError> {
        let mut faults = Vec::new();
        let malformed =
            |reason| WireError::new(code::UPDATE, code::MALFORMED_ATTRIBUTE_LIST, vec![], reason);
        let wlen = u16::from_be_bytes([body[0], body[1]]) as usize;
        let wbytes = body
            .get(2..2 + wlen)
            .ok_or_else(|| malformed("withdrawn routes length too long"))?;
        let rest = &body[2 + wlen..];
        if rest.len() < 2 {
            return Err(malformed("no room for the total path attribute length"));
        }
        let alen = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let abytes = rest
            .get(2..2 + alen)
            .ok_or_else(|| malformed("path attribute length too long"))?;
        let nbytes = &rest[2 + alen..];

        let invalid_network = || {
            WireError::new(
                code::UPDATE,
                code::INVALID_NETWORK_FIELD,
                vec![],
                "malformed prefix",
            )
        };
        let withdrawn = parse_v4_prefixes(wbytes).ok_or_else(invalid_network)?;
        let nlri = parse_v4_prefixes(nbytes).ok_or_else(invalid_network)?;

        let mut attributes = Vec::new();
        let mut seen = [false; 256];
        let mut rest = abytes;
        while !rest.is_empty() {
            if rest.len() < 3 {
                return Err(malformed("truncated attribute header"));
            }
            let (flags, type_code) = (rest[0], rest[1]);
            let (len, hdr) = if flags & FLAG_EXTENDED_LENGTH != 0 {
                if rest.len() < 4 {
                    return Err(malformed("truncated attribute header"));
                }
                (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4)
            } else {
                (rest[2] as usize, 3)
            };
            let Some(whole) = rest.get(..hdr + len) else {
                // RFC 4271 §6.3: an attribute overrunning the list is an attribute length error.
                return Err(WireError::new(
                    code::UPDATE,
                    code::ATTRIBUTE_LENGTH_ERROR,
                    rest.to_vec(),
                    "attribute length overruns the attribute list",
                ));
            };
            rest = &rest[hdr + len..];
            if std::mem::replace(&mut seen[type_code as usize], true) {
                let error = malformed("attribute appears twice");
                // RFC 7606 §3 (g): keep the first, except for the MP attributes.
                if matches!(type_code, ATTR_MP_REACH | ATTR_MP_UNREACH) {
                    return Err(error);
                }
                faults.push(AttrFault {
                    type_code,
                    action: FaultAction::AttributeDiscard,
                    error,
                });
                continue;
            }
            match parse_attr(flags, type_code, &whole[hdr..], whole, ctx) {
                Ok(value) => attributes.push(PathAttribute { flags, value }),
                Err(error) => match fault_action(type_code, &error) {
                    Some(action) => faults.push(AttrFault {
                        type_code,
                        action,
                        error,
                    }),
                    None => return Err(error),
                },
            }
        }

        let mut update = Update {
            withdrawn,
            attributes,
            nlri,
        };
        let withdraw = |faults: &[AttrFault]| {
            faults
                .iter()
                .any(|f| f.action == FaultAction::TreatAsWithdraw)
        };
        // A malformed mandatory attribute was dropped above: reported once, not again as
        // missing.
        if !withdraw(&faults)
            && let Err(error) = update.check_mandatory()
        {
            // RFC 7606 §3 (d).
            faults.push(AttrFault {
                type_code: error.data.first().copied().unwrap_or(0),
                action: FaultAction::TreatAsWithdraw,
                error,
            });
        }
        if withdraw(&faults) {
            update = update.into_withdrawal();
        }
        Ok((update, faults))
    }

    /// RFC 7606 treat-as-withdraw: every route the UPDATE announces is withdrawn instead,
    /// and its attributes are dropped.
    fn into_withdrawal(self) -> Update {
        let mut withdrawn = self.withdrawn;
        withdrawn.extend(self.nlri);
        let mut unreach: Vec<MpUnreach> = Vec::new();
        for a in self.attributes {
            let (afi, safi, prefixes) = match a.value {
                Attr::MpReach(r) => (r.afi, r.safi, r.nlri),
                Attr::MpUnreach(u) => (u.afi, u.safi, u.withdrawn),
                _ => continue,
            };
            match unreach.iter_mut().find(|u| (u.afi, u.safi) == (afi, safi)) {
                Some(u) => u.withdrawn.extend(prefixes),
                None => unreach.push(MpUnreach {
                    afi,
                    safi,
                    withdrawn: prefixes,
                }),
            }
        }
        Update {
            withdrawn,
            attributes: unreach
                .into_iter()
                .map(|u| PathAttribute::new(Attr::MpUnreach(u)))
                .collect(),
            nlri: Vec::new(),
        }
    }

    /// RFC 4271 §6.3: an UPDATE announcing routes must carry ORIGIN, AS_PATH and (for IPv4
    /// NLRI) NEXT_HOP. LOCAL_PREF on iBGP is checked by the session, which knows the peer.
    fn check_mandatory(&self) -> Result<(), WireError> {
        let has_mp_reach = self.attr(ATTR_MP_REACH).is_some();
        if self.nlri.is_empty() && !has_mp_reach {
            return Ok(());
        }
        let mut required = vec![ATTR_ORIGIN, ATTR_AS_PATH];
        if !self.nlri.is_empty() {
            required.push(ATTR_NEXT_HOP);
        }
        for t in required {
            if self.attr(t).is_none() {
                return Err(WireError::new(
                    code::UPDATE,
                    code::MISSING_WELL_KNOWN_ATTRIBUTE,
                    vec![t],
                    "missing well-known mandatory attribute",
                ));
            }
        }
        Ok(())
    }

    fn emit_body(&self, ctx: WireContext, out: &mut Vec<u8>) -> Result<(), EmitError> {
        let at = out.len();
        out.extend_from_slice(&[0, 0]);
        for p in &self.withdrawn {
            emit_prefix(&IpNet::V4(*p), out);
        }
        let wlen = out.len() - at - 2;
        out[at..at + 2].copy_from_slice(
            &u16::try_from(wlen)
                .map_err(|_| EmitError::TooLong(wlen))?
                .to_be_bytes(),
        );
        let at = out.len();
        out.extend_from_slice(&[0, 0]);
        for a in &self.attributes {
            a.emit(ctx, out)?;
        }
        let alen = out.len() - at - 2;
        out[at..at + 2].copy_from_slice(
            &u16::try_from(alen)
                .map_err(|_| EmitError::TooLong(alen))?
                .to_be_bytes(),
        );
        for p in &self.nlri {
            emit_prefix(&IpNet::V4(*p), out);
        }
        Ok(())
    }
}

/// How RFC 7606 handles a malformed path attribute that did not require a session reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// The routes of the UPDATE are withdrawn (RFC 7606 §2).
    TreatAsWithdraw,
    /// The attribute is dropped and the UPDATE used without it.
    AttributeDiscard,
}

/// A malformed attribute in a received UPDATE, handled without closing the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrFault {
    pub type_code: u8,
    pub action: FaultAction,
    /// What a strict parser would have sent in a NOTIFICATION (for logs).
    pub error: WireError,
}

/// RFC 7606 §7 per attribute; `None`: the session must still be reset.
fn fault_action(type_code: u8, error: &WireError) -> Option<FaultAction> {
    if error.subcode == code::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE {
        return None;
    }
    match type_code {
        // §7.11 and §5.3: without a usable MP attribute the NLRI cannot be located.
        ATTR_MP_REACH | ATTR_MP_UNREACH => None,
        // §7.6, §7.7, and RFC 6793 §6 for the AS4 attributes.
        ATTR_ATOMIC_AGGREGATE | ATTR_AGGREGATOR | ATTR_AS4_AGGREGATOR | ATTR_AS4_PATH => {
            Some(FaultAction::AttributeDiscard)
        }
        // §7.1-§7.5, §7.8, RFC 7606 §7 for the community attributes; flags errors (§3 c).
        _ => Some(FaultAction::TreatAsWithdraw),
    }
}

fn attr_error(subcode: u8, whole: &[u8], reason: &'static str) -> WireError {
    WireError::new(code::UPDATE, subcode, whole.to_vec(), reason)
}

fn parse_attr(
    flags: u8,
    type_code: u8,
    v: &[u8],
    whole: &[u8],
    ctx: WireContext,
) -> Result<Attr, WireError> {
    let Some(expected) = well_known_flags(type_code) else {
        if flags & FLAG_OPTIONAL == 0 {
            return Err(attr_error(
                code::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                whole,
                "unrecognized well-known attribute",
            ));
        }
        return Ok(Attr::Unknown {
            type_code,
            value: v.to_vec(),
        });
    };
    // Optional and transitive bits must match the type; partial only on optional transitive.
    let partial_ok = expected == FLAG_OPTIONAL | FLAG_TRANSITIVE;
    if flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != expected
        || (!partial_ok && flags & FLAG_PARTIAL != 0)
    {
        return Err(attr_error(
            code::ATTRIBUTE_FLAGS_ERROR,
            whole,
            "attribute flags do not match its type",
        ));
    }
    let len_err = || {
        attr_error(
            code::ATTRIBUTE_LENGTH_ERROR,
            whole,
            "attribute length wrong for its type",
        )
    };
    let u32_at = |i: usize| u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
    let asn_len = if ctx.four_octet_as { 4 } else { 2 };
    Ok(match type_code {
        ATTR_ORIGIN => {
            if v.len() != 1 {
                return Err(len_err());
            }
            if v[0] > ORIGIN_INCOMPLETE {
                return Err(attr_error(
                    code::INVALID_ORIGIN,
                    whole,
                    "ORIGIN value undefined",
                ));
            }
            Attr::Origin(v[0])
        }
        ATTR_AS_PATH => Attr::AsPath(parse_as_path(v, asn_len).ok_or_else(|| {
            WireError::new(
                code::UPDATE,
                code::MALFORMED_AS_PATH,
                vec![],
                "malformed AS_PATH",
            )
        })?),
        ATTR_AS4_PATH => Attr::As4Path(
            // RFC 6793 §6 would have AS4_PATH errors ignored; we are stricter but keep the code.
            parse_as_path(v, 4).ok_or_else(|| {
                attr_error(code::OPTIONAL_ATTRIBUTE_ERROR, whole, "malformed AS4_PATH")
            })?,
        ),
        ATTR_NEXT_HOP => {
            if v.len() != 4 {
                return Err(len_err());
            }
            let nh = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
            if nh.is_unspecified() || nh.is_broadcast() || nh.is_multicast() {
                return Err(attr_error(
                    code::INVALID_NEXT_HOP,
                    whole,
                    "NEXT_HOP is not a unicast address",
                ));
            }
            Attr::NextHop(nh)
        }
        ATTR_MED | ATTR_LOCAL_PREF => {
            if v.len() != 4 {
                return Err(len_err());
            }
            if type_code == ATTR_MED {
                Attr::Med(u32_at(0))
            } else {
                Attr::LocalPref(u32_at(0))
            }
        }
        ATTR_ATOMIC_AGGREGATE => {
            if !v.is_empty() {
                return Err(len_err());
            }
            Attr::AtomicAggregate
        }
        ATTR_AGGREGATOR | ATTR_AS4_AGGREGATOR => {
            let alen = if type_code == ATTR_AS4_AGGREGATOR {
                4
            } else {
                asn_len
            };
            if v.len() != alen + 4 {
                return Err(len_err());
            }
            let asn = if alen == 4 {
                u32_at(0)
            } else {
                u16::from_be_bytes([v[0], v[1]]) as u32
            };
            let addr = Ipv4Addr::new(v[alen], v[alen + 1], v[alen + 2], v[alen + 3]);
            if type_code == ATTR_AGGREGATOR {
                Attr::Aggregator { asn, addr }
            } else {
                Attr::As4Aggregator { asn, addr }
            }
        }
        ATTR_COMMUNITIES => {
            if !v.len().is_multiple_of(4) {
                return Err(len_err());
            }
            Attr::Communities((0..v.len()).step_by(4).map(u32_at).collect())
        }
        ATTR_EXTENDED_COMMUNITIES => {
            if !v.len().is_multiple_of(8) {
                return Err(len_err());
            }
            Attr::ExtendedCommunities(
                v.chunks_exact(8)
                    .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            )
        }
        ATTR_LARGE_COMMUNITIES => {
            if !v.len().is_multiple_of(12) {
                return Err(len_err());
            }
            Attr::LargeCommunities(
                (0..v.len())
                    .step_by(12)
                    .map(|i| LargeCommunity {
                        global: u32_at(i),
                        local1: u32_at(i + 4),
                        local2: u32_at(i + 8),
                    })
                    .collect(),
            )
        }
        ATTR_MP_REACH => parse_mp_reach(type_code, v, whole)?,
        ATTR_MP_UNREACH => parse_mp_unreach(type_code, v, whole)?,
        _ => unreachable!("well_known_flags covers exactly the types above"),
    })
}

fn parse_as_path(mut v: &[u8], asn_len: usize) -> Option<Vec<AsSegment>> {
    let mut segments = Vec::new();
    while !v.is_empty() {
        let (&kind, &count) = (v.first()?, v.get(1)?);
        if !(AS_SET..=AS_CONFED_SET).contains(&kind) || count == 0 {
            return None;
        }
        let bytes = v.get(2..2 + count as usize * asn_len)?;
        let asns = bytes
            .chunks_exact(asn_len)
            .map(|c| {
                if asn_len == 4 {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u16::from_be_bytes([c[0], c[1]]) as u32
                }
            })
            .collect();
        segments.push(AsSegment { kind, asns });
        v = &v[2 + count as usize * asn_len..];
    }
    Some(segments)
}

fn is_ip_unicast(afi: u16, safi: u8) -> bool {
    matches!(afi, AFI_IPV4 | AFI_IPV6) && safi == SAFI_UNICAST
}

fn parse_mp_reach(type_code: u8, v: &[u8], whole: &[u8]) -> Result<Attr, WireError> {
    let err = || {
        attr_error(
            code::OPTIONAL_ATTRIBUTE_ERROR,
            whole,
            "malformed MP_REACH_NLRI",
        )
    };
    if v.len() < 5 {
        return Err(err());
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    let safi = v[2];
    if !is_ip_unicast(afi, safi) {
        return Ok(Attr::Unknown {
            type_code,
            value: v.to_vec(),
        });
    }
    let nh_len = v[3] as usize;
    let nh = v.get(4..4 + nh_len).ok_or_else(err)?;
    let next_hops = match nh_len {
        4 => vec![IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]))],
        16 => vec![IpAddr::V6(v6(&nh[..16]))],
        32 => vec![IpAddr::V6(v6(&nh[..16])), IpAddr::V6(v6(&nh[16..]))],
        _ => return Err(err()),
    };
    // One reserved octet (formerly the SNPA count), which must be zero.
    let reserved = *v.get(4 + nh_len).ok_or_else(err)?;
    if reserved != 0 {
        return Err(err());
    }
    let nlri = parse_prefixes(afi, &v[5 + nh_len..]).ok_or_else(err)?;
    Ok(Attr::MpReach(MpReach {
        afi,
        safi,
        next_hops,
        nlri,
    }))
}

fn parse_mp_unreach(type_code: u8, v: &[u8], whole: &[u8]) -> Result<Attr, WireError> {
    let err = || {
        attr_error(
            code::OPTIONAL_ATTRIBUTE_ERROR,
            whole,
            "malformed MP_UNREACH_NLRI",
        )
    };
    if v.len() < 3 {
        return Err(err());
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    let safi = v[2];
    if !is_ip_unicast(afi, safi) {
        return Ok(Attr::Unknown {
            type_code,
            value: v.to_vec(),
        });
    }
    let withdrawn = parse_prefixes(afi, &v[3..]).ok_or_else(err)?;
    Ok(Attr::MpUnreach(MpUnreach {
        afi,
        safi,
        withdrawn,
    }))
}

fn v6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ipv6Addr::from(a)
}

fn parse_v4_prefixes(v: &[u8]) -> Option<Vec<Ipv4Net>> {
    parse_prefixes(AFI_IPV4, v).map(|ps| {
        ps.into_iter()
            .filter_map(|p| match p {
                IpNet::V4(p) => Some(p),
                IpNet::V6(_) => None,
            })
            .collect()
    })
}

/// Parses (length, prefix) pairs; host bits beyond the length are kept as sent.
fn parse_prefixes(afi: u16, mut v: &[u8]) -> Option<Vec<IpNet>> {
    let max = if afi == AFI_IPV4 { 32 } else { 128 };
    let mut out = Vec::new();
    while !v.is_empty() {
        let len = v[0];
        if len > max {
            return None;
        }
        let n = (len as usize).div_ceil(8);
        let bytes = v.get(1..1 + n)?;
        let net = if afi == AFI_IPV4 {
            let mut a = [0u8; 4];
            a[..n].copy_from_slice(bytes);
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).ok()?)
        } else {
            let mut a = [0u8; 16];
            a[..n].copy_from_slice(bytes);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).ok()?)
        };
        out.push(net);
        v = &v[1 + n..];
    }
    Some(out)
}

/// Encodes a prefix as (length, the significant octets of the address).
pub fn emit_prefix(p: &IpNet, out: &mut Vec<u8>) {
    let len = p.prefix_len();
    let n = (len as usize).div_ceil(8);
    out.push(len);
    match p {
        IpNet::V4(p) => out.extend_from_slice(&p.addr().octets()[..n]),
        IpNet::V6(p) => out.extend_from_slice(&p.addr().octets()[..n]),
    }
}

/// Encoded size of a prefix.
pub fn prefix_wire_len(p: &IpNet) -> usize {
    1 + (p.prefix_len() as usize).div_ceil(8)
}

impl PathAttribute {
    pub fn emit(&self, ctx: WireContext, out: &mut Vec<u8>) -> Result<(), EmitError> {
        let mut value = Vec::new();
        emit_attr_value(&self.value, ctx, &mut value);
        let extended = self.flags & FLAG_EXTENDED_LENGTH != 0 || value.len() > 255;
        let len = u16::try_from(value.len()).map_err(|_| EmitError::TooLong(value.len()))?;
        if extended {
            out.push(self.flags | FLAG_EXTENDED_LENGTH);
            out.push(self.value.type_code());
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(self.flags);
            out.push(self.value.type_code());
            out.push(len as u8);
        }
        out.extend_from_slice(&value);
        Ok(())
    }
}

fn emit_as_path(segments: &[AsSegment], four_octet: bool, out: &mut Vec<u8>) {
    for s in segments {
        // A segment holds at most 255 ASNs; longer ones are split into consecutive segments.
        for chunk in s.asns.chunks(255) {
            out.push(s.kind);
            out.push(chunk.len() as u8);
            for asn in chunk {
                if four_octet {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let a = u16::try_from(*asn).unwrap_or(AS_TRANS);
                    out.extend_from_slice(&a.to_be_bytes());
                }
            }
        }
    }
}

fn emit_attr_value(a: &Attr, ctx: WireContext, out: &mut Vec<u8>) {
    match a {
        Attr::Origin(o) => out.push(*o),
        Attr::AsPath(segs) => emit_as_path(segs, ctx.four_octet_as, out),
        Attr::As4Path(segs) => emit_as_path(segs, true, out),
        Attr::NextHop(nh) => out.extend_from_slice(&nh.octets()),
        Attr::Med(v) | Attr::LocalPref(v) => out.extend_from_slice(&v.to_be_bytes()),
        Attr::AtomicAggregate => {}
        Attr::Aggregator { asn, addr } => {
            if ctx.four_octet_as {
                out.extend_from_slice(&asn.to_be_bytes());
            } else {
                out.extend_from_slice(&u16::try_from(*asn).unwrap_or(AS_TRANS).to_be_bytes());
            }
            out.extend_from_slice(&addr.octets());
        }
        Attr::As4Aggregator { asn, addr } => {
            out.extend_from_slice(&asn.to_be_bytes());
            out.extend_from_slice(&addr.octets());
        }
        Attr::Communities(cs) => cs
            .iter()
            .for_each(|c| out.extend_from_slice(&c.to_be_bytes())),
        Attr::ExtendedCommunities(cs) => cs
            .iter()
            .for_each(|c| out.extend_from_slice(&c.to_be_bytes())),
        Attr::LargeCommunities(cs) => {
            for c in cs {
                out.extend_from_slice(&c.global.to_be_bytes());
                out.extend_from_slice(&c.local1.to_be_bytes());
                out.extend_from_slice(&c.local2.to_be_bytes());
            }
        }
        Attr::MpReach(m) => {
            out.extend_from_slice(&m.afi.to_be_bytes());
            out.push(m.safi);
            let at = out.len();
            out.push(0);
            for nh in &m.next_hops {
                match nh {
                    IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                }
            }
            out[at] = (out.len() - at - 1) as u8;
            out.push(0);
            m.nlri.iter().for_each(|p| emit_prefix(p, out));
        }
        Attr::MpUnreach(m) => {
            out.extend_from_slice(&m.afi.to_be_bytes());
            out.push(m.safi);
            m.withdrawn.iter().for_each(|p| emit_prefix(p, out));
        }
        Attr::Unknown { value, .. } => out.extend_from_slice(value),
    }
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
