//! `PostgresStore` and `PostgresLease`: a [`SecretStore`] and a [`Lease`] on PostgreSQL.
//!
//! # Layout
//!
//! With schema `s` and table `t` (default `pleo_auth` and `secrets`), the store keeps:
//!
//! | object | what |
//! |---|---|
//! | `s.t` | one row per [`StoreKey`]: `key text` (collation `C`, primary key), `generation bigint`, `value bytea`, `updated_at timestamptz` |
//! | `s.t_generation` | a sequence that numbers every write and every lease |
//! | `s.t_leases` | one row per leased key: `key`, `holder`, `fencing`, `expires_at` |
//! | `s.t_migrations` | the migrations applied (sqlx's table) |
//!
//! # Migrations
//!
//! The schema is created and upgraded by [`PostgresStore::migrate`], which runs the migrations
//! embedded in this crate (with sqlx's migrator, under its advisory lock, so replicas may call it
//! at once). Connecting never changes the database: [`PostgresStoreBuilder::connect`] checks that
//! the table, if it exists, has the expected columns, and refuses a table of another shape with
//! [`ErrorKind::Config`] naming the table and the columns that differ. A store whose table does
//! not exist yet answers every call with [`ErrorKind::Config`] telling to run `migrate`.
//!
//! # Versions and compare-and-swap
//!
//! A [`Version`] is the row's `generation`, taken from the sequence on every write, so a key
//! deleted and written again never gets an old version back. Each operation is one statement:
//!
//! - create ([`Precondition::Absent`]): `INSERT .. ON CONFLICT (key) DO NOTHING RETURNING
//!   generation`; no row back is [`ErrorKind::Conflict`];
//! - compare-and-swap ([`Precondition::Version`]): `UPDATE .. WHERE key = $1 AND generation = $2
//!   RETURNING generation`; no row back is [`ErrorKind::Conflict`]. PostgreSQL locks the row, so of
//!   several writers naming one generation exactly one wins;
//! - unconditional write: `INSERT .. ON CONFLICT (key) DO UPDATE`;
//! - delete: `DELETE .. WHERE key = $1 [AND generation = $2]`.
//!
//! [`SecretStore::get_many`] is one `SELECT .. WHERE key = ANY($1)` per 1,000 keys, and
//! [`SecretStore::list_page`] a range scan of the primary key (`key > $1 AND key < $2 ORDER BY key
//! LIMIT n`).
//!
//! # Leases
//!
//! [`PostgresLease`] keeps a row per leased key in `t_leases`. Acquiring is one statement: an
//! insert, or an update of a row whose `expires_at` has passed, taking a new fencing number from
//! the generation sequence (so fencing numbers grow with every acquisition and never repeat).
//! Release and renewal update the row only while it still names the holder's random token (and,
//! for renewal, has not expired). Expiry runs on the database server's clock
//! (`clock_timestamp()`), so hosts need no synchronised clocks.
//!
//! # Connections
//!
//! A pool of connections (default at most 10, configurable), each with a `statement_timeout`
//! (default 5 s) set at connect. The URL is `postgres://user:password@host:port/database`; for
//! hosts other than loopback the connection must use TLS: without an `sslmode` in the URL the
//! store uses `verify-full`, and `sslmode=disable`, `allow` or `prefer` are refused unless
//! [`PostgresStoreBuilder::allow_plaintext`] is set. [`PostgresStoreBuilder::ca_cert_pem`] trusts
//! only the given CA certificates.
//!
//! The database role needs `USAGE` on the schema, `SELECT, INSERT, UPDATE, DELETE` on both tables
//! and `USAGE` on the sequence; `migrate` also needs `CREATE` on the database (or the schema).
//!
//! # Errors
//!
//! Errors name the backend `"postgres"`. Connection failures, pool and statement timeouts,
//! serialization failures and a server shutting down are [`ErrorKind::Unavailable`] (retryable);
//! a rejected password and a missing or misshapen table are [`ErrorKind::Config`]; a missing
//! privilege is [`ErrorKind::PermissionDenied`]. No error and no `Debug` output holds the
//! password or a value.
//!
//! # Example
//!
//! ```no_run
//! use pleo_auth_core::{Precondition, SecretBytes, SecretStore, StoreKey};
//! use pleo_auth_stores::postgres::PostgresStore;
//!
//! # async fn run() -> pleo_auth_core::Result<()> {
//! let store = PostgresStore::builder("postgres://pleo:password@db.internal:5432/app")
//!     .schema("pleo_auth")
//!     .max_connections(20)
//!     .connect()
//!     .await?;
//! store.migrate().await?; // once per deployment, or at start-up of every replica
//! let key = StoreKey::from_parts(["tenants", "acme"])?;
//! store
//!     .put(&key, SecretBytes::new(b"value".to_vec()), Precondition::Absent)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Lease`]: pleo_auth_core::Lease

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pleo_auth_core::{
    DynLease, Error, ErrorKind, Lease, LeaseGuard, LeaseRelease, ListPage, Precondition, Result,
    SecretBytes, SecretStore, StoreKey, Version, Versioned, check_page_limit, random_urlsafe,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{AssertSqlSafe, Row as _, SqlSafeStr as _};
use url::Url;
use zeroize::Zeroizing;

use crate::address::{is_loopback_host, redact_url};
use crate::cause::{Cause, is_tls_failure};

const BACKEND: &str = "postgres";
/// The default schema.
pub const DEFAULT_SCHEMA: &str = "pleo_auth";
/// The default table.
pub const DEFAULT_TABLE: &str = "secrets";
const DEFAULT_MAX_CONNECTIONS: u32 = 10;
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many keys one `SELECT .. = ANY($1)` of `get_many` names.
const BATCH: usize = 1000;

/// The embedded migrations: version, description, SQL with `{schema}` and `{table}` in place of
/// the quoted names.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "secrets, leases and the generation sequence",
    r#"
CREATE SEQUENCE IF NOT EXISTS {schema}.{table_generation} AS bigint;
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    key text COLLATE "C" PRIMARY KEY,
    generation bigint NOT NULL,
    value bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS {schema}.{table_leases} (
    key text COLLATE "C" PRIMARY KEY,
    holder text NOT NULL,
    fencing bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
"#,
)];

/// The columns the store's table must have: name and `information_schema` data type.
const COLUMNS: [(&str, &str); 4] = [
    ("key", "text"),
    ("generation", "bigint"),
    ("value", "bytea"),
    ("updated_at", "timestamp with time zone"),
];

/// Configures a [`PostgresStore`]; start with [`PostgresStore::builder`].
#[derive(Clone)]
pub struct PostgresStoreBuilder {
    url: Zeroizing<String>,
    schema: String,
    table: String,
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
    ca_cert_pem: Option<Vec<u8>>,
    allow_plaintext: bool,
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("url", &redact_url(&self.url, true))
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("custom_ca", &self.ca_cert_pem.is_some())
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreBuilder {
    /// The schema of the store's objects (default [`DEFAULT_SCHEMA`]): a lowercase SQL name
    /// (`a-z`, `0-9`, `_`, not starting with a digit, at most 40 characters).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The table of the records (default [`DEFAULT_TABLE`]); the lease table, the sequence and
    /// the migrations table are named after it. Same rules as [`PostgresStoreBuilder::schema`].
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The most connections the pool opens (default 10).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// How long a call waits for a free connection of the pool, connecting included (default
    /// 5 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The `statement_timeout` of every connection (default 5 s).
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Trusts only these PEM-encoded CA certificates for the server's TLS certificate.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert_pem = Some(pem.into());
        self
    }

    /// Allows connections without TLS to hosts other than loopback (password and values in
    /// clear).
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    /// Checks the configuration, connects, and checks the shape of the table if it exists. Never
    /// creates or changes anything; see [`PostgresStore::migrate`].
    pub async fn connect(self) -> Result<PostgresStore> {
        check_name(&self.schema, "the schema")?;
        check_name(&self.table, "the table")?;
        if self.max_connections == 0 {
            return Err(config_error("the pool needs at least one connection"));
        }
        let scheme_ok =
            Url::parse(&self.url).is_ok_and(|u| matches!(u.scheme(), "postgres" | "postgresql"));
        if !scheme_ok {
            return Err(config_error(
                "the PostgreSQL URL must start with postgres:// or postgresql://",
            ));
        }
        let mut options = PgConnectOptions::from_str(&self.url)
            .map_err(|_| config_error("the PostgreSQL URL is not valid"))?;
        let local = options.get_socket().is_some() || is_loopback_host(options.get_host());
        let url_names_mode = Url::parse(&self.url)
            .map(|u| {
                u.query_pairs()
                    .any(|(k, _)| k == "sslmode" || k == "ssl-mode")
            })
            .unwrap_or(false);
        if !local && !self.allow_plaintext {
            if !url_names_mode {
                options = options.ssl_mode(PgSslMode::VerifyFull);
            } else if matches!(
                options.get_ssl_mode(),
                PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer
            ) {
                return Err(Error::invalid_input(
                    "a PostgreSQL host other than loopback needs sslmode=require, verify-ca or \
                     verify-full",
                )
                .with_backend(BACKEND));
            }
        }
        if let Some(pem) = &self.ca_cert_pem {
            options = options.ssl_root_cert_from_pem(pem.clone());
        }
        let statement_ms = self.statement_timeout.as_millis().max(1).to_string();
        options = options
            .application_name("pleo-auth")
            .options([("statement_timeout", statement_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|e| map_error("connect", &e))?;
        let names = Names::new(&self.schema, &self.table);
        let store = PostgresStore {
            inner: Arc::new(Shared {
                statements: Statements::new(&names),
                names,
                pool,
                url: redact_url(&self.url, true),
            }),
        };
        match store.table_shape().await? {
            Shape::Missing | Shape::Expected => Ok(store),
            Shape::Other(problems) => Err(store.wrong_shape(&problems)),
        }
    }
}

/// The quoted names of the store's objects.
struct Names {
    schema: String,
    table: String,
    /// `schema` and `table` unquoted, for the catalog query and messages.
    plain_schema: String,
    plain_table: String,
    qualified: String,
    leases: String,
    sequence: String,
    migrations: String,
}

impl Names {
    fn new(schema: &str, table: &str) -> Self {
        let quote = |name: &str| format!("\"{name}\"");
        let qualify = |name: &str| format!("{}.{}", quote(schema), quote(name));
        Self {
            schema: quote(schema),
            table: quote(table),
            plain_schema: schema.to_owned(),
            plain_table: table.to_owned(),
            qualified: qualify(table),
            leases: qualify(&format!("{table}_leases")),
            sequence: qualify(&format!("{table}_generation")),
            migrations: qualify(&format!("{table}_migrations")),
        }
    }

    /// `schema.table`, unquoted, for messages.
    fn display(&self) -> String {
        format!("{}.{}", self.plain_schema, self.plain_table)
    }
}

/// The statements of one store, built once (the names are checked, so they are safe to splice).
struct Statements {
    get: Arc<str>,
    get_many: Arc<str>,
    create: Arc<str>,
    swap: Arc<str>,
    upsert: Arc<str>,
    delete: Arc<str>,
    delete_version: Arc<str>,
    list: Arc<str>,
    list_page: Arc<str>,
    acquire: Arc<str>,
    release: Arc<str>,
    renew: Arc<str>,
}

impl Statements {
    fn new(n: &Names) -> Self {
        let (t, l, seq) = (&n.qualified, &n.leases, &n.sequence);
        let s = |text: String| Arc::<str>::from(text);
        Self {
            get: s(format!("SELECT generation, value FROM {t} WHERE key = $1")),
            get_many: s(format!(
                "SELECT key, generation, value FROM {t} WHERE key = ANY($1)"
            )),
            create: s(format!(
                "INSERT INTO {t} (key, generation, value, updated_at) \
                 VALUES ($1, nextval('{seq}'), $2, clock_timestamp()) \
                 ON CONFLICT (key) DO NOTHING RETURNING generation"
            )),
            swap: s(format!(
                "UPDATE {t} SET generation = nextval('{seq}'), value = $3, \
                 updated_at = clock_timestamp() WHERE key = $1 AND generation = $2 \
                 RETURNING generation"
            )),
            upsert: s(format!(
                "INSERT INTO {t} (key, generation, value, updated_at) \
                 VALUES ($1, nextval('{seq}'), $2, clock_timestamp()) \
                 ON CONFLICT (key) DO UPDATE SET generation = EXCLUDED.generation, \
                 value = EXCLUDED.value, updated_at = EXCLUDED.updated_at RETURNING generation"
            )),
            delete: s(format!("DELETE FROM {t} WHERE key = $1")),
            delete_version: s(format!(
                "DELETE FROM {t} WHERE key = $1 AND generation = $2"
            )),
            list: s(format!(
                "SELECT key FROM {t} WHERE key > $1 AND key < $2 ORDER BY key"
            )),
            list_page: s(format!(
                "SELECT key FROM {t} WHERE key > $1 AND key < $2 ORDER BY key LIMIT $3"
            )),
            acquire: s(format!(
                "INSERT INTO {l} AS l (key, holder, fencing, expires_at) \
                 VALUES ($1, $2, nextval('{seq}'), \
                 clock_timestamp() + $3::bigint * interval '1 millisecond') \
                 ON CONFLICT (key) DO UPDATE SET holder = EXCLUDED.holder, \
                 fencing = EXCLUDED.fencing, expires_at = EXCLUDED.expires_at \
                 WHERE l.expires_at <= clock_timestamp() RETURNING fencing"
            )),
            release: s(format!(
                "UPDATE {l} SET expires_at = '-infinity' WHERE key = $1 AND holder = $2"
            )),
            renew: s(format!(
                "UPDATE {l} SET expires_at = \
                 clock_timestamp() + $3::bigint * interval '1 millisecond' \
                 WHERE key = $1 AND holder = $2 AND expires_at > clock_timestamp()"
            )),
        }
    }
}

fn sql(text: &Arc<str>) -> sqlx::SqlStr {
    AssertSqlSafe(text.clone()).into_sql_str()
}

struct Shared {
    pool: PgPool,
    names: Names,
    statements: Statements,
    /// The URL with its password replaced, for `Debug`.
    url: String,
}

/// A [`SecretStore`] on PostgreSQL; see the [module documentation](self).
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Shared>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.inner.url)
            .field("table", &self.inner.names.display())
            .finish_non_exhaustive()
    }
}

/// What the catalog says about the store's table.
enum Shape {
    Missing,
    Expected,
    /// The table exists with other columns: one line per difference.
    Other(Vec<String>),
}

impl PostgresStore {
    /// A builder for a store at `url` (`postgres://user:password@host:port/database`).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: Zeroizing::new(url.into()),
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            ca_cert_pem: None,
            allow_plaintext: false,
        }
    }

    /// The connection pool, shared with the store (for health checks or the store's tables in
    /// your own queries).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// A lease on the same pool and tables.
    pub fn lease(&self) -> PostgresLease {
        PostgresLease {
            inner: self.inner.clone(),
        }
    }

    /// Creates or upgrades the schema, the tables and the sequence with the migrations embedded
    /// in this crate; safe to call from several replicas at once and again later (applied
    /// migrations are skipped). Refuses, changing nothing, a table of the same name with other
    /// columns.
    pub async fn migrate(&self) -> Result<()> {
        if let Shape::Other(problems) = self.table_shape().await? {
            return Err(self.wrong_shape(&problems));
        }
        let names = &self.inner.names;
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, text)| {
                let text = text
                    .replace("{schema}", &names.schema)
                    .replace(
                        "{table_generation}",
                        &format!("\"{}_generation\"", names.plain_table),
                    )
                    .replace(
                        "{table_leases}",
                        &format!("\"{}_leases\"", names.plain_table),
                    )
                    .replace("{table}", &names.table);
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    AssertSqlSafe(text).into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(names.migrations.clone());
        migrator.create_schema(names.schema.clone());
        migrator.run(&self.inner.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => map_error("migrate", &e),
            other => Error::new(ErrorKind::Config, "migrate failed")
                .with_backend(BACKEND)
                .with_source(Cause::new(other.to_string())),
        })?;
        match self.table_shape().await? {
            Shape::Expected => Ok(()),
            Shape::Missing => Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "table {} is missing after the migrations ran",
                    names.display()
                ),
            )
            .with_backend(BACKEND)),
            Shape::Other(problems) => Err(self.wrong_shape(&problems)),
        }
    }

    /// Compares the columns of the table with the expected ones.
    async fn table_shape(&self) -> Result<Shape> {
        let names = &self.inner.names;
        let rows = sqlx::query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&names.plain_schema)
        .bind(&names.plain_table)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|e| map_error("check the table", &e))?;
        if rows.is_empty() {
            return Ok(Shape::Missing);
        }
        let found: HashMap<String, String> = rows
            .iter()
            .map(|row| (row.get::<String, _>(0), row.get::<String, _>(1)))
            .collect();
        let problems: Vec<String> = COLUMNS
            .iter()
            .filter_map(|&(name, ty)| match found.get(name) {
                None => Some(format!("column {name} ({ty}) is missing")),
                Some(have) if have != ty => Some(format!("column {name} is {have}, not {ty}")),
                Some(_) => None,
            })
            .collect();
        Ok(if problems.is_empty() {
            Shape::Expected
        } else {
            Shape::Other(problems)
        })
    }

    fn wrong_shape(&self, problems: &[String]) -> Error {
        Error::new(
            ErrorKind::Config,
            format!(
                "table {} is not a pleo-auth store table ({}); name another table with \
                 PostgresStoreBuilder::table or schema, or move this one away",
                self.inner.names.display(),
                problems.join("; ")
            ),
        )
        .with_backend(BACKEND)
    }

    /// The error of a statement, with the table's name where the table is missing.
    fn error(&self, op: &'static str, e: &sqlx::Error) -> Error {
        if db_code(e).as_deref() == Some(UNDEFINED_TABLE) {
            return Error::new(
                ErrorKind::Config,
                format!(
                    "{op} failed: table {} does not exist; run PostgresStore::migrate",
                    self.inner.names.display()
                ),
            )
            .with_backend(BACKEND)
            .with_source(Cause::new(e.to_string()));
        }
        map_error(op, e)
    }

    fn statements(&self) -> &Statements {
        &self.inner.statements
    }
}

/// The lower (exclusive) and upper (exclusive) bounds of the keys below `prefix`: every such key
/// starts with `prefix/`, and `0` is the character after `/`.
fn range_of(prefix: &StoreKey) -> (String, String) {
    (format!("{prefix}/"), format!("{prefix}0"))
}

fn version_number(version: &Version) -> Option<i64> {
    version.as_str().parse::<i64>().ok().filter(|&n| n > 0)
}

fn to_version(generation: i64) -> Version {
    Version::from_u64(u64::try_from(generation).unwrap_or_default())
}

fn parse_key(raw: &str) -> Result<StoreKey> {
    StoreKey::parse(raw)
        .map_err(|_| Error::corrupt("a row's key is not a store key").with_backend(BACKEND))
}

#[async_trait]
impl SecretStore for PostgresStore {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        let row = sqlx::query(sql(&self.statements().get))
            .bind(key.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.error("read", &e))?;
        Ok(row.map(|row| Versioned {
            version: to_version(row.get(0)),
            value: SecretBytes::new(row.get::<Vec<u8>, _>(1)),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let st = self.statements();
        let value = value.expose_secret();
        let generation: Option<i64> = match &precondition {
            Precondition::None => {
                sqlx::query_scalar(sql(&st.upsert))
                    .bind(key.as_str())
                    .bind(value)
                    .fetch_optional(&self.inner.pool)
                    .await
            }
            Precondition::Absent => {
                sqlx::query_scalar(sql(&st.create))
                    .bind(key.as_str())
                    .bind(value)
                    .fetch_optional(&self.inner.pool)
                    .await
            }
            Precondition::Version(want) => match version_number(want) {
                None => Ok(None),
                Some(want) => {
                    sqlx::query_scalar(sql(&st.swap))
                        .bind(key.as_str())
                        .bind(want)
                        .bind(value)
                        .fetch_optional(&self.inner.pool)
                        .await
                }
            },
        }
        .map_err(|e| self.error("write", &e))?;
        match (generation, precondition) {
            (Some(generation), _) => Ok(to_version(generation)),
            (None, Precondition::Absent) => {
                Err(Error::conflict("key already exists").with_backend(BACKEND))
            }
            (None, _) => Err(Error::conflict("version does not match").with_backend(BACKEND)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        let st = self.statements();
        let deleted = match &precondition {
            Precondition::Absent => {
                return Err(
                    Error::invalid_input("delete cannot require absence").with_backend(BACKEND)
                );
            }
            Precondition::None => {
                sqlx::query(sql(&st.delete))
                    .bind(key.as_str())
                    .execute(&self.inner.pool)
                    .await
                    .map_err(|e| self.error("delete", &e))?;
                return Ok(());
            }
            Precondition::Version(want) => match version_number(want) {
                None => 0,
                Some(want) => sqlx::query(sql(&st.delete_version))
                    .bind(key.as_str())
                    .bind(want)
                    .execute(&self.inner.pool)
                    .await
                    .map_err(|e| self.error("delete", &e))?
                    .rows_affected(),
            },
        };
        if deleted == 0 {
            return Err(Error::conflict("version does not match").with_backend(BACKEND));
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, prefix = %prefix))]
    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        let (low, high) = range_of(prefix);
        let rows: Vec<String> = sqlx::query_scalar(sql(&self.statements().list))
            .bind(low)
            .bind(high)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error("list", &e))?;
        rows.iter().map(|raw| parse_key(raw)).collect()
    }

    /// One `SELECT .. WHERE key = ANY($1)` per 1,000 keys.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, keys = keys.len()))]
    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        let mut found: HashMap<String, Versioned> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            let names: Vec<&str> = chunk.iter().map(StoreKey::as_str).collect();
            let rows = sqlx::query(sql(&self.statements().get_many))
                .bind(names)
                .fetch_all(&self.inner.pool)
                .await
                .map_err(|e| self.error("read many", &e))?;
            for row in rows {
                found.insert(
                    row.get(0),
                    Versioned {
                        version: to_version(row.get(1)),
                        value: SecretBytes::new(row.get::<Vec<u8>, _>(2)),
                    },
                );
            }
        }
        Ok(keys
            .iter()
            .map(|key| found.get(key.as_str()).cloned())
            .collect())
    }

    /// A range scan of the primary key, `limit + 1` rows to know whether a page follows.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, prefix = %prefix))]
    async fn list_page(
        &self,
        prefix: &StoreKey,
        after: Option<&StoreKey>,
        limit: usize,
    ) -> Result<ListPage> {
        check_page_limit(limit)?;
        let (mut low, high) = range_of(prefix);
        if let Some(after) = after
            && after.as_str() > low.as_str()
        {
            low = after.as_str().to_owned();
        }
        let rows: Vec<String> = sqlx::query_scalar(sql(&self.statements().list_page))
            .bind(low)
            .bind(high)
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error("list", &e))?;
        let keys = rows
            .iter()
            .map(|raw| parse_key(raw))
            .collect::<Result<Vec<_>>>()?;
        Ok(ListPage::from_sorted(keys, None, limit))
    }

    /// The PostgreSQL lease on the same pool ([`PostgresStore::lease`]).
    fn native_lease(&self) -> Option<DynLease> {
        Some(Arc::new(self.lease()))
    }
}

/// A [`Lease`] on PostgreSQL (a row per key with holder, fencing number and expiry); see the
/// [module documentation](self). Get one from [`PostgresStore::lease`].
#[derive(Clone)]
pub struct PostgresLease {
    inner: Arc<Shared>,
}

impl fmt::Debug for PostgresLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLease")
            .field("url", &self.inner.url)
            .field("table", &self.inner.names.display())
            .finish_non_exhaustive()
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[async_trait]
impl Lease for PostgresLease {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn acquire(&self, key: &StoreKey, ttl: Duration) -> Result<Option<LeaseGuard>> {
        let store = PostgresStore {
            inner: self.inner.clone(),
        };
        let holder = random_urlsafe(18);
        let fencing: Option<i64> = sqlx::query_scalar(sql(&self.inner.statements.acquire))
            .bind(key.as_str())
            .bind(&holder)
            .bind(ttl_ms(ttl))
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| store.error("acquire lease", &e))?;
        Ok(fencing.map(|fencing| {
            LeaseGuard::new(
                key.clone(),
                u64::try_from(fencing).unwrap_or_default(),
                PostgresRelease {
                    store,
                    key: key.clone(),
                    holder,
                },
            )
        }))
    }
}

struct PostgresRelease {
    store: PostgresStore,
    key: StoreKey,
    holder: String,
}

#[async_trait]
impl LeaseRelease for PostgresRelease {
    async fn release(&self) -> Result<()> {
        sqlx::query(sql(&self.store.inner.statements.release))
            .bind(self.key.as_str())
            .bind(&self.holder)
            .execute(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.error("release lease", &e))?;
        Ok(())
    }

    /// One `UPDATE` that matches only this holder's unexpired row.
    async fn renew(&self, ttl: Duration) -> Result<()> {
        let renewed = sqlx::query(sql(&self.store.inner.statements.renew))
            .bind(self.key.as_str())
            .bind(&self.holder)
            .bind(ttl_ms(ttl))
            .execute(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.error("renew lease", &e))?
            .rows_affected();
        if renewed == 0 {
            return Err(
                Error::conflict("the lease is no longer held by this holder").with_backend(BACKEND),
            );
        }
        Ok(())
    }
}

const UNDEFINED_TABLE: &str = "42P01";

fn db_code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Checks a schema or table name: lowercase SQL identifier of at most 40 characters (room for
/// the suffixes of the other objects within PostgreSQL's 63).
fn check_name(name: &str, what: &'static str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{what} must be 1-40 characters of a-z 0-9 _, not starting with a digit"),
        )
        .with_backend(BACKEND));
    }
    Ok(())
}

fn config_error(message: &'static str) -> Error {
    Error::new(ErrorKind::Config, message).with_backend(BACKEND)
}

fn map_error(op: &'static str, e: &sqlx::Error) -> Error {
    let kind = match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000" | "3D000" | "42P01" | "42703" | "42804" | "3F000") => {
                ErrorKind::Config
            }
            Some("42501") => ErrorKind::PermissionDenied,
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || code == "40001"
                    || code == "40P01"
                    || code == "55P03" =>
            {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Unexpected,
        },
        sqlx::Error::Io(io) if is_tls_failure(io) => ErrorKind::Config,
        sqlx::Error::Tls(_) => ErrorKind::Config,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ErrorKind::Unavailable
        }
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => ErrorKind::Corrupt,
        _ => ErrorKind::Unexpected,
    };
    let error = Error::new(kind, format!("{op} failed")).with_backend(BACKEND);
    match e {
        // A configuration error may repeat the URL; say only what kind it was.
        sqlx::Error::Configuration(_) => {
            error.with_source(Cause::new("the connection settings were refused"))
        }
        _ => error.with_source(Cause::new(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "Secrets", "1abc", "a-b", "a\"b", "a.b", &"x".repeat(41)] {
            assert!(check_name(bad, "the table").is_err(), "{bad:?}");
        }
        for good in ["secrets", "pleo_auth", "t1", "_x"] {
            check_name(good, "the table").unwrap();
        }
    }

    #[test]
    fn ranges_hold_exactly_the_keys_below_a_prefix() {
        let prefix = StoreKey::from_parts(["a", "b"]).unwrap();
        let (low, high) = range_of(&prefix);
        let inside = prefix.child("c").unwrap();
        let sibling = StoreKey::from_parts(["a", "b+"]).unwrap();
        let sibling2 = StoreKey::from_parts(["a", "bc"]).unwrap();
        assert!(inside.as_str() > low.as_str() && inside.as_str() < high.as_str());
        for outside in [&prefix, &sibling, &sibling2] {
            let s = outside.as_str();
            assert!(!(s > low.as_str() && s < high.as_str()), "{s}");
        }
    }

    #[test]
    fn urls_lose_their_password() {
        let redacted = redact_url(
            "postgres://app:CANARY-pass@db.example:5432/app?password=CANARY",
            true,
        );
        assert!(!redacted.contains("CANARY"), "{redacted}");
        let builder = PostgresStore::builder("postgres://app:CANARY-pass@db.example/app");
        assert!(!format!("{builder:?}").contains("CANARY"));
    }

    #[tokio::test]
    async fn plaintext_to_remote_hosts_is_refused_and_names_are_checked() {
        let err = PostgresStore::builder("postgres://app:CANARY@db.example/app?sslmode=disable")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(!format!("{err} {err:?}").contains("CANARY"));
        let err = PostgresStore::builder("postgres://127.0.0.1/app")
            .table("Bad-Name")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let err = PostgresStore::builder("mysql://CANARY@127.0.0.1/app")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(!format!("{err} {err:?}").contains("CANARY"));
    }
}
