//! OPEN: version, AS, hold time, identifier and capabilities (RFC 4271 §4.2, RFC 5492).

use super::*;

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
    pub(super) fn parse(body: &[u8]) -> Result<Open, WireError> {
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

    pub(super) fn emit_body(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
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

pub(super) fn malformed_param() -> WireError {
    // RFC 4271 leaves this to "OPEN message error"; RFC 5492 implementations use subcode 0.
    WireError::new(
        code::OPEN,
        0,
        vec![],
        "malformed optional parameter or capability",
    )
}

pub(super) fn parse_capabilities(mut rest: &[u8]) -> Result<Vec<Capability>, WireError> {
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
