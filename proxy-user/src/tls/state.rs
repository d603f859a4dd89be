//! [`TlsState`]: the loaded TLS settings of every frontend and backend that has `tls`.
use std::{collections::HashMap, sync::Arc};

use super::{ClientTls, ServerTls, TlsError};
use crate::config::Config;

/// A frontend's or backend's TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{section} {name:?}: tls")]
pub struct TlsLoadError {
    pub section: &'static str,
    pub name: String,
    #[source]
    pub source: Box<TlsError>,
}

/// The TLS state of every frontend and backend that has `tls`, built from the config's files.
#[derive(Default)]
pub struct TlsState {
    pub frontends: HashMap<String, Arc<ServerTls>>,
    pub backends: HashMap<String, Arc<ClientTls>>,
}

impl TlsState {
    /// Reads every certificate, key and CA file the config names.
    pub fn load(config: &Config) -> Result<Self, TlsLoadError> {
        let mut state = Self::default();
        for fe in &config.frontends {
            if let Some(tls) = &fe.tls {
                let loaded = ServerTls::load(tls).map_err(|source| TlsLoadError {
                    section: "frontend",
                    name: fe.name.clone(),
                    source: Box::new(source),
                })?;
                state.frontends.insert(fe.name.clone(), Arc::new(loaded));
            }
        }
        for be in &config.backends {
            if let Some(tls) = &be.tls {
                let loaded =
                    ClientTls::load(tls, be.connect_timeout).map_err(|source| TlsLoadError {
                        section: "backend",
                        name: be.name.clone(),
                        source: Box::new(source),
                    })?;
                state.backends.insert(be.name.clone(), Arc::new(loaded));
            }
        }
        if !state.frontends.is_empty() || !state.backends.is_empty() {
            super::warm_up_rng();
        }
        Ok(state)
    }
}
