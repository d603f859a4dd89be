//! Destinations a client asks for, and which of them may be opened: the `host:port` grammar
//! ([`target`]) shared by CONNECT requests and `allow_destinations` rules, and the policy
//! ([`policy`]) that judges a requested name and every address the proxy would dial.
//!
//! A foundation module: config holds its rules, connect and transparent mode apply them.
pub mod policy;
pub mod target;

pub use policy::{DestinationRule, Judgement, Policy};
pub use target::{Target, TargetHost};
