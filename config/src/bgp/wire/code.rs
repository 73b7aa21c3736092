//! NOTIFICATION error codes (RFC 4271 §4.5) and the subcodes we use, and the protocol
//! error that carries them.

use super::Notification;

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
