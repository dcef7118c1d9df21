//! The facade's error: one per plane, mapped once here to an [`ErrorKind`] that every
//! boundary (HTTP status, gRPC code, process exit code, Python exception) maps from.

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
    /// An operating-system failure that is not the input's fault (a port in use, a
    /// file that cannot be written).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A failure of quiver itself (a task that panicked, a runtime that did not start).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an error is: the one classification every boundary maps from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad input: a malformed request or definition, a wrong type, a missing column.
    InvalidInput,
    /// Something named does not exist (a feature service, view, feature).
    NotFound,
    /// The request is over a limit (rows, bytes).
    TooLarge,
    /// A store or the operating system failed; retrying later may succeed.
    Unavailable,
    /// A failure of quiver itself.
    Internal,
}

impl ErrorKind {
    /// The process exit code: 2 for bad input, 1 for failures that are not the input's
    /// fault (storage, I/O, internal).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::InvalidInput | ErrorKind::NotFound | ErrorKind::TooLarge => 2,
            ErrorKind::Unavailable | ErrorKind::Internal => 1,
        }
    }

    /// A stable name, as used in API error bodies.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "INVALID_ARGUMENT",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::TooLarge => "PAYLOAD_TOO_LARGE",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        use quiver_online::Error as On;
        use quiver_registry::Error as R;
        match self {
            Error::Registry(R::NotFound(_)) | Error::Online(On::Registry(R::NotFound(_))) => {
                ErrorKind::NotFound
            }
            Error::Registry(R::Storage { .. })
            | Error::Offline(quiver_offline::Error::Io { .. })
            | Error::Offline(quiver_offline::Error::Delta(_))
            | Error::Online(On::Store { .. })
            | Error::Io { .. } => ErrorKind::Unavailable,
            Error::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::InvalidInput,
        }
    }

    /// The process exit code for this error (see [`ErrorKind::exit_code`]).
    pub fn exit_code(&self) -> i32 {
        self.kind().exit_code()
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error::Invalid(s.to_string())
    }
}

/// Result alias for quiver operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
