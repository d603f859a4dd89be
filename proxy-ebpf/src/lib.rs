#![no_std]
// The library target exists so that proxy-user can name this crate as a build-dependency.
