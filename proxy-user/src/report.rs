//! How errors are rendered for the log: the whole chain on one line.

/// `e` and its sources, `: `-separated: what `{:#}` of anyhow prints, for `thiserror` types.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
