//! How errors are rendered for the log: the whole chain on one line.

/// `e` and its sources, `: `-separated: what `{:#}` of anyhow prints, for `thiserror` types.
///
/// A source whose text already ends the line is left out: some errors (hickory's `NetError`,
/// anything with `#[error("...: {0}")]` on a `#[from]` field) write their cause into their own
/// message and return it as `source()` as well, and the line would say it twice.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    /// Writes its source into its message, as hickory's errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("says its cause: {0}")]
    struct Echoing(#[from] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Echoing);

    #[test]
    fn each_cause_is_written_once() {
        assert_eq!(
            error_chain(&Outer(Echoing(Inner))),
            "outer: says its cause: inner"
        );
        assert_eq!(error_chain(&Echoing(Inner)), "says its cause: inner");
    }
}
