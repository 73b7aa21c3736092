//! NOTIFICATION (RFC 4271 §4.5) and ROUTE-REFRESH (RFC 2918).

use super::*;

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
