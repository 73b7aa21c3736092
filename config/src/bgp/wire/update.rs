//! UPDATE: withdrawn routes, path attributes, NLRI (RFC 4271 §4.3), with the revised
//! error handling of RFC 7606.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attributes: Vec<PathAttribute>,
    pub nlri: Vec<Ipv4Net>,
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
    pub(super) fn parse_faults(
        body: &[u8],
        ctx: WireContext,
    ) -> Result<(Update, Vec<AttrFault>), WireError> {
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
    pub(super) fn into_withdrawal(self) -> Update {
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
    pub(super) fn check_mandatory(&self) -> Result<(), WireError> {
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

    pub(super) fn emit_body(&self, ctx: WireContext, out: &mut Vec<u8>) -> Result<(), EmitError> {
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
pub(super) fn fault_action(type_code: u8, error: &WireError) -> Option<FaultAction> {
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
