//! Destinations a client asks for, and which of them may be opened: the `host:port` grammar
//! ([`target`]) shared by CONNECT requests and `allow_destinations` rules, and the policy
//! ([`policy`]) that judges a requested name and every address the proxy would dial.
//!
//! A foundation module: config holds its rules, connect and transparent mode apply them.
pub(crate) mod policy;
pub(crate) mod target;

pub use policy::DestinationRule;
pub(crate) use policy::{Judgement, Policy};
pub(crate) use target::{Target, TargetHost};
