//! The real PostgreSQL and Redis the shared-state tests use (`HEARTH_TEST_POSTGRES_URL`,
//! `HEARTH_TEST_REDIS_URL`; by default the local servers `scripts/services.sh` starts), each
//! test with a schema and a key prefix of its own.

use std::path::{Path, PathBuf};

pub fn redis_url() -> String {
    std::env::var("HEARTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn postgres_url() -> String {
    std::env::var("HEARTH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Creates a fresh schema and returns a URL whose connections use it.
pub fn fresh_ledger_url() -> String {
    let schema = unique("ledger_");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let admin = sqlx::PgPool::connect(&postgres_url()).await.expect("PostgreSQL answers");
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
        admin.close().await;
    });
    format!("{}?options=-c%20search_path%3D{schema}", postgres_url())
}

/// Writes a `hearth.toml` naming Redis (under a fresh key prefix, with `lease_ms`) and the
/// PostgreSQL ledger at `ledger_url`, plus `extra` TOML.
pub fn write_config(dir: &Path, ledger_url: &str, lease_ms: u64, extra: &str) -> PathBuf {
    let path = dir.join("hearth.toml");
    let text = format!(
        "[state]\nredis_url = \"{}\"\nkey_prefix = \"{}\"\nlease_ms = {lease_ms}\n\n\
         [ledger]\npostgres_url = \"{ledger_url}\"\n\n{extra}",
        redis_url(),
        unique("t:"),
    );
    std::fs::write(&path, text).expect("write hearth.toml");
    path
}
