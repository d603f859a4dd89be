//! Placeholder: replaced by the metrics module.
