//! The `api` and `method` labels of the per-request metrics: a request path with its ids
//! collapsed, from a set bounded per frontend, and a method from the standard set.
//!
//! No label may take values a client chooses without bound (docs/architecture.md, "Bounds"):
//! ids in paths (`/api/v1/check_run/12345`, `/v1/traces/0af7651916cd43dd`) are collapsed to
//! `:id`, a frontend keeps at most [`MAX_APIS`] distinct values (the ones it saw first), and
//! past that, or for a path longer than [`MAX_API_LEN`], the label is `other`.
//!
//! The file depends on std only: the fuzz crate (`fuzz/`) compiles it into its `http_request`
//! target.

use std::collections::HashSet;
use std::sync::Mutex;

/// Distinct `api` values per frontend.
pub(crate) const MAX_APIS: usize = 100;
/// The longest `api` value kept; a longer collapsed path counts as `other`.
pub(crate) const MAX_API_LEN: usize = 128;
/// The label of what is past the bounds.
pub(crate) const OTHER: &str = "other";
/// What an id segment collapses to.
pub(crate) const ID: &str = ":id";

/// The path of `target` (an origin-form target: the query is dropped) with every id segment
/// replaced by [`ID`]: decimal numbers, hex strings of 8 or more digits, UUIDs. An empty path
/// is `/`.
pub(crate) fn normalize(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_id(segment) { ID } else { segment });
    }
    out
}

/// Whether a path segment is an id.
fn is_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // 8-4-4-4-12 hex digits.
    let groups: Vec<&str> = segment.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// The methods that keep their own label; every other is `other`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The `method` label.
pub(crate) fn method_label(method: &str) -> &'static str {
    METHODS.into_iter().find(|m| *m == method).unwrap_or(OTHER)
}

/// The `api` values of one frontend, bounded by [`MAX_APIS`].
#[derive(Debug, Default)]
pub(crate) struct Apis {
    seen: Mutex<HashSet<String>>,
}

/// An `api` label for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Api {
    pub label: String,
    /// Counted as [`OTHER`] because a bound was reached.
    pub overflow: bool,
}

impl Apis {
    /// The label of `target`'s path: its collapsed form if this frontend already has it or has
    /// room for it, else [`OTHER`] (with `overflow`).
    pub(crate) fn label(&self, target: &str) -> Api {
        let api = normalize(target);
        if api.len() > MAX_API_LEN {
            return Api {
                label: OTHER.to_owned(),
                overflow: true,
            };
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&api) {
            return Api {
                label: api,
                overflow: false,
            };
        }
        if seen.len() >= MAX_APIS {
            return Api {
                label: OTHER.to_owned(),
                overflow: true,
            };
        }
        seen.insert(api.clone());
        Api {
            label: api,
            overflow: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_collapse() {
        for (path, api) in [
            ("/api/v1/series", "/api/v1/series"),
            ("/api/v1/check_run/12345?api_key=x", "/api/v1/check_run/:id"),
            ("/v0.4/traces", "/v0.4/traces"),
            ("/v1/traces/0af7651916cd43dd/spans", "/v1/traces/:id/spans"),
            ("/hosts/deadbee", "/hosts/deadbee"),
            (
                "/x/123e4567-e89b-12d3-a456-426614174000/y/7",
                "/x/:id/y/:id",
            ),
            ("", "/"),
            ("?q=1", "/"),
            ("/", "/"),
            ("//a//", "//a//"),
        ] {
            assert_eq!(normalize(path), api, "{path:?}");
        }
    }

    #[test]
    fn the_set_is_bounded() {
        let apis = Apis::default();
        for i in 0..MAX_APIS {
            let name = format!("/n{}", "x".repeat(i + 1));
            assert_eq!(apis.label(&name).label, name);
        }
        let past = apis.label("/new");
        assert_eq!(past.label, OTHER);
        assert!(past.overflow);
        // Known ones keep their label.
        assert_eq!(apis.label("/nx").label, "/nx");
        let long = format!("/{}", "z".repeat(MAX_API_LEN));
        assert_eq!(Apis::default().label(&long).label, OTHER);
    }

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_label("POST"), "POST");
        assert_eq!(method_label("post"), OTHER);
        assert_eq!(method_label("PROPFIND"), OTHER);
    }
}
