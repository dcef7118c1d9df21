//! The facade's error: one per plane, mapped once here.

/// Errors of quiver operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] quiver_registry::Error),
    #[error(transparent)]
    Offline(#[from] quiver_offline::Error),
    #[error(transparent)]
    Online(#[from] quiver_online::Error),
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
    /// An on-demand feature view cannot be compiled or evaluated.
    #[error(transparent)]
    OnDemand(#[from] quiver_ondemand::Error),
    /// The request is invalid; the message says why.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Error {
    /// The process exit code for this error: 2 for bad input or definitions, 1 for
    /// failures of storage or I/O.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Registry(quiver_registry::Error::Storage { .. })
            | Error::Offline(quiver_offline::Error::Io { .. })
            | Error::Offline(quiver_offline::Error::Delta(_))
            | Error::Online(quiver_online::Error::Store(_)) => 1,
            _ => 2,
        }
    }
}

/// Result alias for quiver operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
