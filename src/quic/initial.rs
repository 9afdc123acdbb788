//! Placeholder until the Initial reader lands.

use crate::peek::Parse;

pub struct ClientInitials;

impl ClientInitials {
    pub fn new(_max_crypto: usize) -> ClientInitials {
        ClientInitials
    }

    pub fn feed(&mut self, _datagram: &[u8]) -> Result<Parse, InitialError> {
        Err(InitialError::NotInitial)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InitialError {
    #[error("not a QUIC Initial")]
    NotInitial,
    #[error("too large")]
    TooLarge,
}

impl InitialError {
    pub fn reason(self) -> &'static str {
        match self {
            InitialError::NotInitial => "not_initial",
            InitialError::TooLarge => "too_large",
        }
    }
}
