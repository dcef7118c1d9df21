//! The error type of quiver-core.

/// Errors raised by the core: invalid definitions, values that do not fit a type,
/// and corrupt encodings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definition or argument is invalid; the message names what and where.
    #[error("{0}")]
    Invalid(String),
    /// A value does not match the type it was declared with.
    #[error("type error: {0}")]
    Type(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt encoding: {0}")]
    Corrupt(String),
    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result alias for quiver-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
