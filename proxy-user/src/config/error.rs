//! [`ConfigError`]: every config mistake, positioned as `ORIGIN:LINE:COL: message`.
//!
//! The parser and the converter work with byte offsets (what [`toml::Spanned`] records); the
//! offset is turned into a 1-based line and column only here, once, so both steps report the
//! same way and `agent-proxy check` can print one line an editor can jump to.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Why a config could not be loaded.
///
/// `Display` is exactly `ORIGIN:LINE:COL: message` (1-based line and column, the column counted
/// in characters), or `ORIGIN: cannot read: <io error>` when the file could not be read.
#[derive(Debug, Clone)]
pub struct ConfigError {
    origin: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `Arc` so the error stays `Clone` (a reload keeps the last error for `/stats`).
    Read(Arc<io::Error>),
    Invalid {
        line: usize,
        column: usize,
        message: String,
    },
}

impl ConfigError {
    pub(super) fn read(origin: &str, err: io::Error) -> Self {
        ConfigError {
            origin: origin.to_owned(),
            kind: Kind::Read(Arc::new(err)),
        }
    }

    /// An error about the text at byte `offset` of `text`.
    pub(super) fn at(origin: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_column(text, offset);
        ConfigError {
            origin: origin.to_owned(),
            kind: Kind::Invalid {
                line,
                column,
                message: escape_controls(&message.into()),
            },
        }
    }

    /// A file whose bytes are not UTF-8: positioned at the first byte that is not.
    pub(super) fn not_utf8(origin: &str, bytes: &[u8], err: &std::str::Utf8Error) -> Self {
        let good = err.valid_up_to();
        // The prefix is valid UTF-8 by definition of `valid_up_to`.
        let text = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let byte = bytes.get(good).copied().unwrap_or_default();
        ConfigError::at(
            origin,
            text,
            good,
            format!("the file is not UTF-8 text (byte {byte:#04x}); save it as UTF-8"),
        )
    }

    /// A syntax or type error found while deserializing.
    pub(super) fn from_toml(origin: &str, text: &str, err: &toml::de::Error) -> Self {
        let span = err.span().unwrap_or(0..0);
        // toml's messages are already short and lowercase; a few are multi-line or lack the
        // offending key, which a one-line report needs.
        let mut message = err.message().trim().replace('\n', "; ");
        if message == "duplicate key"
            && let Some(key) = text.get(span.clone())
        {
            message = format!("duplicate key `{key}`");
        }
        ConfigError::at(origin, text, span.start, message)
    }

    /// The origin given to [`super::parse`], or the path given to [`super::load`].
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The 1-based line and column, unless the file could not be read at all.
    pub fn position(&self) -> Option<(usize, usize)> {
        match &self.kind {
            Kind::Read(_) => None,
            Kind::Invalid { line, column, .. } => Some((*line, *column)),
        }
    }

    /// The message without the origin and position.
    pub fn message(&self) -> String {
        match &self.kind {
            Kind::Read(err) => format!("cannot read: {err}"),
            Kind::Invalid { message, .. } => message.clone(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Read(err) => write!(f, "{}: cannot read: {err}", self.origin),
            Kind::Invalid {
                line,
                column,
                message,
            } => write!(f, "{}:{line}:{column}: {message}", self.origin),
        }
    }
}

/// No `source()`: the io error is already part of the message, and returning it too would
/// print it twice in an `anyhow` chain (`{:#}`).
impl std::error::Error for ConfigError {}

/// `message` with every control character (C0, C1, DEL) and every bidirectional-text control
/// written as `\u{..}`: values quoted from the file must not move a terminal's cursor, change
/// its colours or reorder what an operator reads.
fn escape_controls(message: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !message.chars().any(hidden) {
        return message.to_owned();
    }
    message
        .chars()
        .map(|c| {
            if hidden(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // A span from toml always starts on a char boundary; be safe with any caller anyway.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(line_column(text, 12), (2, 6));
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn unreadable_file_has_no_position() {
        let err = ConfigError::read("x.toml", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(err.position(), None);
        assert_eq!(err.to_string(), "x.toml: cannot read: entity not found");
    }
}
