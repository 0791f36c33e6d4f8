//! The admin API: install, list and remove packages while the daemon serves.
//!
//! | route | what |
//! |---|---|
//! | `PUT /admin/models/{name}` | body: the package as a plain tar stream (see [`hearth_package::archive`]); validated, installed under the models directory and loaded; answers the model id and its predict URL |
//! | `GET /admin/models` | every model with its state: `loading`, `ready`, or `failed` with the reason |
//! | `DELETE /admin/models/{name}` | unloads the model and deletes its package directory (and the adapters pushed to it) |
//! | `PUT /admin/models/{name}/adapters/{adapter}` | body: a PEFT LoRA adapter directory as a tar stream; checked against the model, stored, and served as `{name}:{adapter}` (see [`adapters`]) |
//! | `DELETE /admin/models/{name}/adapters/{adapter}` | stops serving a pushed adapter and deletes it |
//! | `POST /admin/api-keys` | creates a client API key (name, metadata, models, limits); answers its secret once |
//! | `GET /admin/api-keys` | the keys that work now, without secrets |
//! | `DELETE /admin/api-keys/{id}` | revokes a key |
//! | `GET /admin/catalog`, `/admin/runs`, `/admin/usage`, `/admin/metrics`; `POST /admin/runs/{id}/cancel` | what the dashboard shows (see [`observe`]) |
//! | `GET`, `DELETE /admin/runs/{id}/payload` | a run's stored request and answer (see [`payloads`]) |
//! | `GET /dashboard` | the dashboard (see [`dashboard`]) |
//!
//! With an admin token configured, every call needs `Authorization: Bearer <token>` (401
//! otherwise). Without one, only loopback clients are answered (403 for the rest): an
//! unauthenticated push runs arbitrary weights, so it must not be reachable from the network.
//!
//! A replaced or removed model's engine keeps serving the requests it has; it stops once the
//! last of them ends and the last handle to it is dropped.

mod adapters;
mod dashboard;
mod error;
mod install;
mod keys;
mod models;
mod observe;
mod payloads;
mod push;
pub(crate) mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use axum::Router;

use crate::state::AppState;
pub use adapters::{restore_adapters, restore_all_adapters};
pub(crate) use error::AdminError;
pub use install::clean_staging;
pub use state::{AdminSettings, AdminState, LoadedModel, ModelLoader};
pub(crate) use state::{BusyGuard, Phase};

/// The admin routes; each handler authenticates through the [`Admin`] extractor.
pub(crate) fn routes() -> Router<AppState> {
    let model = put(push::push)
        .delete(models::remove)
        // Uploads are streamed to disk and bounded by the archive limits, not the body limit.
        .layer(DefaultBodyLimit::disable());
    let adapter = put(adapters::push_adapter)
        .delete(adapters::remove_adapter)
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/admin/models", get(models::list))
        .route("/admin/models/{name}", model)
        .route("/admin/models/{name}/adapters/{adapter}", adapter)
        .route("/admin/api-keys", get(keys::list).post(keys::create))
        .route("/admin/api-keys/{id}", axum::routing::delete(keys::revoke))
        .route("/admin/catalog", get(observe::catalog))
        .route("/admin/runs", get(observe::runs))
        .route("/admin/runs/{id}", get(observe::run))
        .route("/admin/runs/{id}/cancel", post(observe::cancel))
        .route("/admin/runs/{id}/payload", get(payloads::get).delete(payloads::delete))
        .route("/admin/usage", get(observe::usage))
        .route("/admin/metrics", get(observe::metrics))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/parts.js", get(dashboard::parts))
        .route("/dashboard/app.css", get(dashboard::styles))
        .route("/dashboard/config.json", get(dashboard::config))
        .route("/favicon.ico", get(dashboard::favicon))
}

/// An authenticated admin caller.
pub(crate) struct Admin(Arc<AdminState>);

impl FromRequestParts<AppState> for Admin {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AdminError> {
        let admin = enabled(state)?;
        match &admin.settings.token {
            Some(token) => check_token(parts, token)?,
            None => check_loopback(parts)?,
        }
        Ok(Admin(admin.clone()))
    }
}

/// The admin API's state, or why there is none (the dashboard needs it too).
fn enabled(state: &AppState) -> Result<&Arc<AdminState>, AdminError> {
    state.admin().ok_or_else(|| {
        AdminError::NotFound(
            "the admin API (and its dashboard) is not enabled on this daemon".into(),
        )
    })
}

fn check_token(parts: &Parts, token: &str) -> Result<(), AdminError> {
    let given = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AdminError::Unauthorized(
            "the admin API needs `Authorization: Bearer <admin token>`",
        ))?;
    if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized("the admin token is wrong"))
    }
}

fn check_loopback(parts: &Parts) -> Result<(), AdminError> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    match peer {
        Some(addr) if addr.ip().is_loopback() => check_same_machine_names(parts),
        _ => Err(AdminError::Forbidden(
            "no admin token is configured (HEARTH_ADMIN_TOKEN, or `token` under [admin] in \
             hearth.toml), so the admin API answers only clients on this machine (loopback)"
                .into(),
        )),
    }
}

/// A loopback peer may still be a browser on this machine running another site's page: that
/// page can send requests here (a form's POST needs no permission), and through DNS rebinding
/// read the answers. Without a token, the request must name this machine (`Host`) and, when a
/// browser says where it comes from (`Origin`), come from this machine too.
fn check_same_machine_names(parts: &Parts) -> Result<(), AdminError> {
    let names_this_machine = |value: &str| {
        let authority = value.rsplit("://").next().unwrap_or(value);
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => authority.split(':').next().unwrap_or(authority),
        };
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    for name in [header::HOST, header::ORIGIN] {
        if let Some(value) = parts.headers.get(&name) {
            if !value.to_str().is_ok_and(names_this_machine) {
                return Err(AdminError::Forbidden(format!(
                    "without an admin token, the admin API answers requests whose `{name}` is \
                     this machine (localhost or a loopback address) only"
                )));
            }
        }
    }
    Ok(())
}

/// Compares without an early exit, so response time does not reveal how much of a guess was
/// right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The URL a client predicts with: Cog's route for the model, on the host it called.
fn predict_url(parts_host: Option<&str>, name: &str) -> String {
    match parts_host {
        Some(host) => format!("http://{host}/cog/{name}/predictions"),
        None => format!("/cog/{name}/predictions"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: Option<&str>, authorization: Option<&str>) -> Parts {
        let mut request = axum::http::Request::builder();
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        if let Some(peer) = peer {
            let addr: SocketAddr = peer.parse().unwrap();
            request = request.extension(ConnectInfo(addr));
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn without_a_token_only_loopback_clients_are_answered() {
        assert!(check_loopback(&parts(Some("127.0.0.1:5000"), None)).is_ok());
        assert!(check_loopback(&parts(Some("[::1]:5000"), None)).is_ok());
        let err = check_loopback(&parts(Some("10.1.2.3:5000"), None)).unwrap_err();
        assert!(matches!(err, AdminError::Forbidden(_)), "{err:?}");
        assert!(err.to_string().contains("no admin token is configured"), "{err}");
        // No peer address known (not served through `serve`): refused, not assumed local.
        assert!(check_loopback(&parts(None, None)).is_err());
    }

    #[test]
    fn without_a_token_a_request_must_name_this_machine() {
        let with = |headers: &[(header::HeaderName, &str)]| {
            let mut request = axum::http::Request::builder();
            for (name, value) in headers {
                request = request.header(name, *value);
            }
            let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
            let mut parts = request.body(()).unwrap().into_parts().0;
            parts.extensions.insert(ConnectInfo(addr));
            check_loopback(&parts)
        };
        for host in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "127.0.0.2"] {
            assert!(with(&[(header::HOST, host)]).is_ok(), "{host}");
        }
        assert!(with(&[(header::ORIGIN, "http://localhost:8080")]).is_ok());
        // A rebound name, or another site's page in a browser on this machine.
        let rebound = with(&[(header::HOST, "evil.example:8080")]).unwrap_err();
        assert!(rebound.to_string().contains("`host` is this machine"), "{rebound}");
        let page = [(header::HOST, "127.0.0.1:8080"), (header::ORIGIN, "https://evil.example")];
        assert!(matches!(with(&page), Err(AdminError::Forbidden(_))));
        assert!(with(&[(header::ORIGIN, "null")]).is_err());
    }

    #[test]
    fn a_configured_token_must_be_presented_exactly() {
        assert!(check_token(&parts(None, Some("Bearer s3cret")), "s3cret").is_ok());
        for wrong in [None, Some("Bearer s3cre"), Some("Bearer s3cret2"), Some("Basic s3cret")] {
            let err = check_token(&parts(Some("127.0.0.1:1"), wrong), "s3cret").unwrap_err();
            assert!(matches!(err, AdminError::Unauthorized(_)), "{wrong:?}");
        }
    }
}
