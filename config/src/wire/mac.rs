//! The one MAC address type of the workspace.

use std::fmt;
use std::str::FromStr;

/// An IEEE 802 MAC-48 address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MAC address {text:?} is not six two-digit hexadecimal octets separated by ':'")]
pub struct MacParseError {
    pub text: String,
}

impl Mac {
    pub const LEN: usize = 6;
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);

    /// The address in `bytes`, which must hold exactly six octets.
    pub fn from_bytes(bytes: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(bytes).ok().map(Mac)
    }

    pub fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Mac::BROADCAST
    }

    /// The group bit (I/G): multicast, broadcast included.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_zero(&self) -> bool {
        *self == Mac::ZERO
    }

    /// A station address one may send a unicast frame to: not a group and not all zero.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// A locally administered unicast address derived from `seed` (xorshift), for devices
    /// that need a stable made-up MAC; the caller chooses how random the seed is.
    pub fn local_from_seed(seed: u64) -> Mac {
        let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut b = [0u8; 6];
        for byte in &mut b {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }
}

impl From<[u8; 6]> for Mac {
    fn from(b: [u8; 6]) -> Mac {
        Mac(b)
    }
}

impl From<Mac> for [u8; 6] {
    fn from(m: Mac) -> [u8; 6] {
        m.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Mac, MacParseError> {
        let err = || MacParseError {
            text: s.to_string(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(err)?;
            // from_str_radix alone would take a sign ("+a").
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        match parts.next() {
            None => Ok(Mac(out)),
            Some(_) => Err(err()),
        }
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_form() {
        let m: Mac = "0A:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m, Mac([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "zz:1b:2c:3d:4e:5f",
            "+a:1b:2c:3d:4e:5f",
            "0a-1b-2c-3d-4e-5f",
        ] {
            let e = bad.parse::<Mac>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn classes() {
        assert!(Mac::BROADCAST.is_broadcast() && Mac::BROADCAST.is_multicast());
        assert!(!Mac::BROADCAST.is_unicast() && !Mac::ZERO.is_unicast());
        assert!(!Mac([0x33, 0x33, 0, 0, 0, 1]).is_unicast());
        assert!(!Mac([0x01, 0, 0x5e, 0, 0, 1]).is_unicast());
        assert!(Mac([0x02, 0, 0, 0, 0, 1]).is_unicast());
        let m = Mac::local_from_seed(42);
        assert!(m.is_unicast() && m.0[0] & 0x02 != 0);
        assert_ne!(m, Mac::local_from_seed(43));
    }

    #[test]
    fn serde_as_text() {
        let m = Mac([2, 0, 0, 0, 0, 1]);
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"02:00:00:00:00:01\"");
        assert_eq!(serde_json::from_str::<Mac>(&j).unwrap(), m);
        assert!(serde_json::from_str::<Mac>("\"02:00\"").is_err());
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(b in any::<[u8; 6]>()) {
            let m = Mac(b);
            prop_assert_eq!(m.to_string().parse::<Mac>().unwrap(), m);
        }
    }
}
