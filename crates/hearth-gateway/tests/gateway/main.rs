//! The gateway against fake providers on 127.0.0.1 speaking each real wire format.

mod cache;
mod failover;
mod fake;
mod limits;
mod local;
mod replicas;
mod resume;
mod support;
mod translation;
