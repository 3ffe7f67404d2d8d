//! The one error type of the engine.

use std::fmt;

/// A rule error located in the source: line and column (1-based) and the
/// source line with a caret under the offending span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// What was wrong and what was expected.
    pub message: String,
    /// 1-based line of the start of the span.
    pub line: usize,
    /// 1-based column (in characters) of the start of the span.
    pub column: usize,
    /// Byte offset of the start of the span.
    pub offset: usize,
    /// The offending source line followed by a caret line.
    pub snippet: String,
}

impl RuleError {
    /// Builds an error for the byte span `[start, end)` of `source`.
    pub fn at(source: &str, start: usize, end: usize, message: impl Into<String>) -> Self {
        let start = start.min(source.len());
        let end = end.clamp(start, source.len());
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let line = source[..start].matches('\n').count() + 1;
        let column = source[line_start..start].chars().count() + 1;
        let text = &source[line_start..line_end];
        let width = source[start..end.min(line_end)].chars().count().max(1);
        let snippet = format!(
            "  {text}\n  {}{}",
            " ".repeat(column - 1),
            "^".repeat(width)
        );
        RuleError {
            message: message.into(),
            line,
            column,
            offset: start,
            snippet,
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}\n{}",
            self.line, self.column, self.message, self.snippet
        )
    }
}

/// Every error the engine reports. The Python bindings map each variant to
/// one exception class under `segmint.SegmintError`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmintError {
    /// The rule text does not parse.
    #[error("rule syntax error at {0}")]
    RuleSyntax(RuleError),
    /// The rule parses but is ill-typed or refers to something invalid.
    #[error("rule type error at {0}")]
    RuleType(RuleError),
    /// No audience with this key is defined.
    #[error("unknown audience {key:?}")]
    UnknownAudience {
        /// The key asked for.
        key: String,
    },
    /// No computed trait with this key is defined.
    #[error("unknown computed trait {key:?}")]
    UnknownComputedTrait {
        /// The key asked for.
        key: String,
    },
    /// The user id has never been seen.
    #[error("unknown user {user_id:?}")]
    UnknownUser {
        /// The external id asked for.
        user_id: String,
    },
    /// Defining the audience would make audience references circular.
    #[error("audience reference cycle: {}", path.join(" -> "))]
    AudienceCycle {
        /// The cycle, first key repeated at the end.
        path: Vec<String>,
    },
    /// The audience or computed trait is referenced by other rules.
    #[error("{key:?} is used by {}; remove or redefine those first", used_by.join(", "))]
    InUse {
        /// The key that cannot be removed.
        key: String,
        /// The rules that reference it.
        used_by: Vec<String>,
    },
    /// An event is malformed (no user id, bad timestamp, wrong types, ...).
    #[error("invalid event: {message}")]
    InvalidEvent {
        /// What was wrong and what was expected.
        message: String,
    },
    /// A size limit was exceeded.
    #[error("{what} is too large: {actual} > limit {limit}")]
    LimitExceeded {
        /// What was too large.
        what: String,
        /// The limit.
        limit: usize,
        /// What was given.
        actual: usize,
    },
    /// An argument to an API call is invalid (bad key, bad time, ...).
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// What was wrong and what was expected.
        message: String,
    },
    /// The data directory cannot be used (an I/O error, a lock held by
    /// another process, a setting that differs from the stored one).
    #[error("storage error at {path}: {message}")]
    Storage {
        /// The file or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A log or snapshot file fails its checksum or does not decode.
    #[error("corrupt data in {path} at byte offset {offset}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// Byte offset of the bad record or section.
        offset: u64,
        /// What was found and what was expected.
        message: String,
    },
}

/// Result alias used throughout the core.
pub type Result<T, E = SegmintError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_points_at_span() {
        let src = "trait.a == 1 and\n  count(\"X\") >= x";
        let at = src.find('x').unwrap();
        let e = RuleError::at(src, at, at + 1, "expected a number");
        assert_eq!((e.line, e.column), (2, 17));
        assert_eq!(e.snippet, "    count(\"X\") >= x\n                  ^");
    }
}
