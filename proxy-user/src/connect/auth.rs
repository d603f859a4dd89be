//! Basic `Proxy-Authorization` (RFC 7617) against the frontend's `users`.
//!
//! Passwords never leave this module in readable form: [`User`]'s `Debug` prints `***`, and
//! the check compares in constant time (`subtle`) against every user, so neither the timing
//! nor an early exit tells which part of a guess was right.

use std::fmt;

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

/// The realm of the `Proxy-Authenticate` challenge.
pub(crate) const REALM: &str = "agent-proxy";

pub(crate) use crate::config::User;

/// The credentials a frontend accepts; empty means no authentication.
#[derive(Clone, Default)]
pub(crate) struct Users {
    /// `name:password` of each user, the form the decoded header takes.
    credentials: Vec<Vec<u8>>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Users({} entries, ***)", self.credentials.len())
    }
}

impl Users {
    pub(crate) fn new(users: &[User]) -> Self {
        let credentials = users
            .iter()
            .map(|u| format!("{}:{}", u.name, u.password()).into_bytes())
            .collect();
        Self { credentials }
    }

    /// Whether requests must authenticate.
    pub(crate) fn required(&self) -> bool {
        !self.credentials.is_empty()
    }

    /// Whether `header` (the raw `Proxy-Authorization` value) names one of the users.
    /// Always true when no users are configured.
    pub(crate) fn check(&self, header: Option<&[u8]>) -> bool {
        if !self.required() {
            return true;
        }
        let Some(decoded) = header.and_then(basic_credentials) else {
            return false;
        };
        // Every entry is compared, match or not.
        let mut matched = subtle::Choice::from(0);
        for expected in &self.credentials {
            matched |= expected.as_slice().ct_eq(decoded.as_slice());
        }
        matched.into()
    }
}

/// The decoded `name:password` of a `Basic` credential; the scheme is case-insensitive.
fn basic_credentials(header: &[u8]) -> Option<Vec<u8>> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
        .into_bytes()
    }

    #[test]
    fn accepts_only_a_configured_pair() {
        let users = Users::new(&[
            User::new("agent".into(), "s3cret".into()),
            User::new("other".into(), "x:y".into()),
        ]);
        assert!(users.check(Some(&header("agent:s3cret"))));
        assert!(users.check(Some(&header("other:x:y"))));
        assert!(users.check(Some(b"bAsIc   YWdlbnQ6czNjcmV0 ")));
        for bad in [
            "agent:s3cre",
            "agent:s3cret2",
            "agent:",
            ":s3cret",
            "other:x",
            "",
        ] {
            assert!(!users.check(Some(&header(bad))), "{bad:?} must be refused");
        }
        assert!(!users.check(None));
        assert!(!users.check(Some(b"Bearer YWdlbnQ6czNjcmV0")));
        assert!(!users.check(Some(b"Basic !!!")));
        assert!(!users.check(Some(b"Basic")));
    }

    #[test]
    fn no_users_means_no_authentication() {
        let users = Users::default();
        assert!(!users.required());
        assert!(users.check(None));
    }

    #[test]
    fn debug_output_hides_passwords() {
        let user = User::new("agent".into(), "hunter2".into());
        let text = format!("{user:?} {:?}", Users::new(std::slice::from_ref(&user)));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("agent"), "{text}");
    }
}
