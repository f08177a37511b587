//! The one error type of llmrec, and its `Result` alias.

use std::path::PathBuf;

/// Every fallible operation in llmrec returns this error.
///
/// Variants carry enough context (file, line, field, expectation) for a user to
/// fix their input without reading our source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Input that does not have the expected shape.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// File that was being read.
        path: PathBuf,
        /// 1-based line number (0 when the whole file is at fault).
        line: usize,
        /// What was found and what was expected.
        message: String,
    },
    /// A configuration value that is invalid.
    #[error("config {field}: {message}")]
    Config {
        /// Dotted path of the offending field (`eval.ks`, `models.ease.lambda`).
        field: String,
        /// What was expected.
        message: String,
    },
    /// A dataset name nobody registered.
    #[error("unknown dataset `{name}`; known datasets: {known}")]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// Comma-separated list of registered names.
        known: String,
    },
    /// A dataset or model file that is not on this machine and could not be fetched.
    #[error("{what} not found: looked in {looked_in}. {hint}")]
    Missing {
        /// What is missing (a file, a model).
        what: String,
        /// Where we looked.
        looked_in: String,
        /// How to fix it: the URL to fetch, the variable to set.
        hint: String,
    },
    /// A downloaded or local file whose checksum does not match the registry.
    #[error("{path}: sha256 mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The registered hash.
        expected: String,
        /// The hash of the bytes on disk.
        actual: String,
    },
    /// A network failure, quoting the server where it said something.
    #[error("network: {0}")]
    Network(String),
    /// An artifact (checkpoint, embedding table) that is incompatible with this build or dataset.
    #[error("artifact {path}: {message}")]
    Artifact {
        /// The artifact's path.
        path: PathBuf,
        /// Why it cannot be used.
        message: String,
    },
    /// Invalid arguments to a library call (empty dataset, inconsistent sizes).
    #[error("{0}")]
    Invalid(String),
    /// Errors from a model or backend, keeping the error it raised.
    #[error("{context}: {source}")]
    Model {
        /// Which model or backend.
        context: String,
        /// The error it raised (a candle error, an HTTP error, or a message).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with llmrec's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A parse error at `path:line`.
    pub fn parse(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        Error::Parse {
            path: path.into(),
            line,
            message: message.into(),
        }
    }

    /// A configuration error on `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An error from a model or backend, keeping `source` (any error, or a message)
    /// as the cause that [`std::error::Error::source`] returns.
    pub fn model(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Model {
            context: context.into(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_errors_keep_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "server slow");
        let e = Error::model("openai", io);
        assert_eq!(e.to_string(), "openai: server slow");
        let src = std::error::Error::source(&e).expect("a source");
        let io = src
            .downcast_ref::<std::io::Error>()
            .expect("the io error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
        let msg = Error::model("sasrec", format!("loss became {}", f32::NAN));
        assert_eq!(msg.to_string(), "sasrec: loss became NaN");
    }
}
