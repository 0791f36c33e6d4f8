//! hearth-gateway
