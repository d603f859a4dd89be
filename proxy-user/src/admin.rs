//! Placeholder: replaced by the admin module.
