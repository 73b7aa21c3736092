//! NOTIFICATION error codes (RFC 4271 §4.5) and the subcodes we use, and the protocol
//! error that carries them.

use super::Notification;

pub const HEADER: u8 = 1;
pub const OPEN: u8 = 2;
pub const UPDATE: u8 = 3;
pub const HOLD_TIMER_EXPIRED: u8 = 4;
pub const FSM: u8 = 5;
pub const CEASE: u8 = 6;

/// A NOTIFICATION error code, typed; `Unknown` keeps codes RFC 4271 does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationCode {
    Header,
    Open,
    Update,
    HoldTimerExpired,
    Fsm,
    Cease,
    Unknown(u8),
}

impl From<u8> for NotificationCode {
    fn from(code: u8) -> Self {
        match code {
            HEADER => NotificationCode::Header,
            OPEN => NotificationCode::Open,
            UPDATE => NotificationCode::Update,
            HOLD_TIMER_EXPIRED => NotificationCode::HoldTimerExpired,
            FSM => NotificationCode::Fsm,
            CEASE => NotificationCode::Cease,
            other => NotificationCode::Unknown(other),
        }
    }
}

impl NotificationCode {
    pub fn code(self) -> u8 {
        match self {
            NotificationCode::Header => HEADER,
            NotificationCode::Open => OPEN,
            NotificationCode::Update => UPDATE,
            NotificationCode::HoldTimerExpired => HOLD_TIMER_EXPIRED,
            NotificationCode::Fsm => FSM,
            NotificationCode::Cease => CEASE,
            NotificationCode::Unknown(code) => code,
        }
    }
}

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
    use NotificationCode as C;
    match (NotificationCode::from(code), subcode) {
        (C::Header, CONNECTION_NOT_SYNCHRONIZED) => "connection not synchronized",
        (C::Header, BAD_MESSAGE_LENGTH) => "bad message length",
        (C::Header, BAD_MESSAGE_TYPE) => "bad message type",
        (C::Header, _) => "message header error",
        (C::Open, UNSUPPORTED_VERSION) => "unsupported version number",
        (C::Open, BAD_PEER_AS) => "bad peer AS",
        (C::Open, BAD_BGP_IDENTIFIER) => "bad BGP identifier",
        (C::Open, UNSUPPORTED_OPTIONAL_PARAMETER) => "unsupported optional parameter",
        (C::Open, UNACCEPTABLE_HOLD_TIME) => "unacceptable hold time",
        (C::Open, UNSUPPORTED_CAPABILITY) => "unsupported capability",
        (C::Open, _) => "OPEN message error",
        (C::Update, MALFORMED_ATTRIBUTE_LIST) => "malformed attribute list",
        (C::Update, UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE) => "unrecognized well-known attribute",
        (C::Update, MISSING_WELL_KNOWN_ATTRIBUTE) => "missing well-known attribute",
        (C::Update, ATTRIBUTE_FLAGS_ERROR) => "attribute flags error",
        (C::Update, ATTRIBUTE_LENGTH_ERROR) => "attribute length error",
        (C::Update, INVALID_ORIGIN) => "invalid ORIGIN attribute",
        (C::Update, INVALID_NEXT_HOP) => "invalid NEXT_HOP attribute",
        (C::Update, OPTIONAL_ATTRIBUTE_ERROR) => "optional attribute error",
        (C::Update, INVALID_NETWORK_FIELD) => "invalid network field",
        (C::Update, MALFORMED_AS_PATH) => "malformed AS_PATH",
        (C::Update, _) => "UPDATE message error",
        (C::HoldTimerExpired, _) => "hold timer expired",
        (C::Fsm, _) => "finite state machine error",
        (C::Cease, CEASE_ADMINISTRATIVE_SHUTDOWN) => "cease: administrative shutdown",
        (C::Cease, CEASE_PEER_DECONFIGURED) => "cease: peer de-configured",
        (C::Cease, CEASE_ADMINISTRATIVE_RESET) => "cease: administrative reset",
        (C::Cease, CEASE_CONNECTION_REJECTED) => "cease: connection rejected",
        (C::Cease, _) => "cease",
        (C::Unknown(_), _) => "unknown error code",
    }
}
