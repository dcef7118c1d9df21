//! The registry: the repository format, validation of definitions, the stored registry
//! and the plan that `apply` carries out.
//!
//! * [`config`] — `quiver.yaml`.
//! * [`repo`] — finding and parsing definition files.
//! * [`resolve`] — validating definitions against each other and their sources' schemas.
//! * [`state`] — the registry's stored form, written atomically.
//! * [`plan`] — the difference between two registry states.

pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod plan;
pub mod repo;
pub mod resolve;
pub mod state;
mod yaml;

pub use config::RepoConfig;
pub use plan::Plan;
pub use repo::{Definitions, Located};
pub use resolve::{resolve, SourceSchema, SourceSchemas};
pub use state::{Registry, RegistryState};

/// A problem in a definition: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionError {
    /// The file, relative to the repository.
    pub file: String,
    /// The 1-based line, when known.
    pub line: Option<u32>,
    /// The 1-based column, when known (with the line).
    pub column: Option<u32>,
    /// The object, as `kind 'name'` (e.g. `feature view 'driver_stats'`).
    pub object: String,
    /// The field at fault (e.g. `features[2].dtype`).
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.object.is_empty() {
            write!(f, ": {}", self.object)?;
        }
        if !self.field.is_empty() {
            write!(f, ", field '{}'", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more definitions are invalid; every problem found is listed.
    #[error("{} invalid definition(s):\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Definitions(Vec<DefinitionError>),
    /// `quiver.yaml` is missing or invalid.
    #[error("{0}")]
    Config(String),
    /// Something asked for is not in the registry.
    #[error("{0}")]
    NotFound(String),
    /// A request to the registry is malformed (e.g. both features and a service).
    #[error("{0}")]
    Invalid(String),
    /// What is asked for has no data yet; the message names the command that fills it.
    #[error("{0}")]
    NoData(String),
    /// The registry file could not be read or written.
    #[error("registry {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// Result alias for the registry.
pub type Result<T, E = Error> = std::result::Result<T, E>;
