// The destination grammar and policy and the address classifier, laid out as the daemon has
// them (they depend on std, ipnet and tracing only), for the targets that compile daemon files
// which use them: the request module finds the target as `crate::destination::Target`, the
// config finds its rules as `crate::destination::DestinationRule`, the policy finds the target
// as `super::target` and the classifier as `crate::address_class`.
//
// Included (`include!`) at the root of those targets; it sits beside them, so its paths read
// the same from either place.

#[path = "../../proxy-user/src/address_class.rs"]
#[allow(dead_code)]
mod address_class;
#[path = "../../proxy-user/src/destination"]
#[allow(dead_code)]
mod destination {
    pub mod policy;
    pub mod target;
    // Each target uses one of these, as the daemon file it compiles names it.
    #[allow(unused_imports)]
    pub use policy::DestinationRule;
    #[allow(unused_imports)]
    pub(crate) use target::Target;
}
