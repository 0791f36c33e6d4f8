//! Stored API keys, in the ledger's database: the same table in SQLite (created with the
//! ledger's schema) and PostgreSQL (migration `0002_api_keys.sql`).

use chrono::{TimeZone, Utc};
use sqlx::{ColumnIndex, Decode, PgPool, Row, SqlitePool, Type};

use super::{ApiKey, KeyError};

#[async_trait::async_trait]
pub trait KeyStore: Send + Sync {
    async fn insert(&self, key: &ApiKey, secret_sha256: &str) -> Result<(), KeyError>;
    /// The unrevoked key whose secret hashes to `secret_sha256`.
    async fn find(&self, secret_sha256: &str) -> Result<Option<ApiKey>, KeyError>;
    /// Whether a key with this id was there to revoke.
    async fn revoke(&self, id: &str) -> Result<bool, KeyError>;
    /// Every unrevoked key.
    async fn list(&self) -> Result<Vec<ApiKey>, KeyError>;
    /// Whether any key was ever created (revoked ones too: revoking the last key must not turn
    /// authentication off).
    async fn any(&self) -> Result<bool, KeyError>;
}

/// The key table in one of the ledger's databases.
pub enum SqlKeys {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

const COLUMNS: &str = "id, name, metadata, models, limits, created_at_ms";

/// Runs `$body` with `$pool` bound to whichever pool this is (sqlx's types differ per
/// database, the statements do not).
macro_rules! on_pool {
    ($keys:expr, $pool:ident => $body:expr) => {
        match $keys {
            SqlKeys::Sqlite($pool) => $body,
            SqlKeys::Postgres($pool) => $body,
        }
    };
}

impl SqlKeys {
    /// `text` with `?` placeholders, as this database writes them.
    fn sql(&self, text: &str) -> String {
        match self {
            SqlKeys::Sqlite(_) => text.to_owned(),
            SqlKeys::Postgres(_) => {
                let mut n = 0;
                text.chars()
                    .map(|c| match c {
                        '?' => {
                            n += 1;
                            format!("${n}")
                        }
                        c => c.to_string(),
                    })
                    .collect()
            }
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn key_from_row<R>(row: &R) -> Result<ApiKey, KeyError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let corrupt =
        |e: serde_json::Error| KeyError::Invalid(format!("stored key `{id}` is unreadable: {e}"));
    let text = |name: &str| row.try_get::<String, _>(name);
    Ok(ApiKey {
        name: text("name")?,
        metadata: serde_json::from_str(&text("metadata")?).map_err(corrupt)?,
        models: serde_json::from_str(&text("models")?).map_err(corrupt)?,
        limits: serde_json::from_str(&text("limits")?).map_err(corrupt)?,
        created_at: Utc
            .timestamp_millis_opt(row.try_get("created_at_ms")?)
            .single()
            .unwrap_or_default(),
        from_config: false,
        id,
    })
}

#[async_trait::async_trait]
impl KeyStore for SqlKeys {
    async fn insert(&self, key: &ApiKey, secret_sha256: &str) -> Result<(), KeyError> {
        let sql = self.sql(
            "INSERT INTO api_keys (id, name, secret_sha256, metadata, models, limits, created_at_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        on_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&key.id)
                .bind(&key.name)
                .bind(secret_sha256)
                .bind(json(&key.metadata))
                .bind(json(&key.models))
                .bind(json(&key.limits))
                .bind(key.created_at.timestamp_millis())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn find(&self, secret_sha256: &str) -> Result<Option<ApiKey>, KeyError> {
        let sql = self.sql(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE secret_sha256 = ? AND revoked_at_ms IS NULL"
        ));
        on_pool!(self, pool => {
            let row = sqlx::query(&sql).bind(secret_sha256).fetch_optional(pool).await?;
            row.as_ref().map(key_from_row).transpose()
        })
    }

    async fn revoke(&self, id: &str) -> Result<bool, KeyError> {
        let sql = self
            .sql("UPDATE api_keys SET revoked_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL");
        let now = Utc::now().timestamp_millis();
        let changed = on_pool!(self, pool => {
            sqlx::query(&sql).bind(now).bind(id).execute(pool).await?.rows_affected()
        });
        Ok(changed > 0)
    }

    async fn list(&self) -> Result<Vec<ApiKey>, KeyError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE revoked_at_ms IS NULL ORDER BY id");
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(key_from_row).collect()
        })
    }

    async fn any(&self) -> Result<bool, KeyError> {
        let sql = "SELECT COUNT(*) AS n FROM (SELECT 1 FROM api_keys LIMIT 1) AS k";
        let n: i64 = on_pool!(self, pool => {
            sqlx::query(sql).fetch_one(pool).await?.try_get("n")?
        });
        Ok(n > 0)
    }
}
