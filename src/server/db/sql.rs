//! One way to run the job database's statements on either engine: SQLite embedded (the
//! default) or PostgreSQL (receivers of a scaled-out wave sharing their jobs). Every statement
//! is written once, in the dialect both accept, with `?N` placeholders; for PostgreSQL they
//! become `$N`, and for SQLite a `FOR UPDATE` row lock is dropped (its write transactions lock
//! the whole database already). Rows come back as [`Row`]s read by column name.
//!
//! Calls are synchronous, as SQLite's always were here. A PostgreSQL call made on an async
//! worker leaves it first (`block_in_place`), so the runtime's other tasks go on meanwhile.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use postgres_types::{to_sql_checked, IsNull, ToSql, Type};

/// A value going into or out of a statement: the database keeps only integers, text and NULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(v as i64)
            }
        }
    )*};
}
int_value!(i64, u32, usize, bool);

impl From<u64> for Value {
    /// Past i64::MAX (no real size or count; a hostile client's number), kept as i64::MAX
    /// rather than wrapped to a negative that would no longer read back.
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// `params![a, b, ...]`: statement parameters as [`Value`]s.
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::server::db::sql::Value::from($v)),*][..] };
}
pub(crate) use params;

/// A row, its values by column name.
pub struct Row {
    names: Arc<[String]>,
    values: Vec<Value>,
}

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}
impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for u64 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| i.try_into().ok())
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| i.try_into().ok())
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl Row {
    /// The column `name` as a `T`; a missing column or a value of another kind is an error,
    /// never a default.
    pub fn get<T: FromValue>(&self, name: &str) -> Result<T> {
        let i = self.names.iter().position(|n| n == name).ok_or_else(|| anyhow!("column {name}: not in the row"))?;
        T::from_value(&self.values[i])
            .ok_or_else(|| anyhow!("column {name}: {:?} is not a {}", self.values[i], std::any::type_name::<T>()))
    }
}

/// Runs statements: a connection, or a transaction on one.
pub trait Exec {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// The number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;

    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
    fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row> {
        self.query_opt(sql, params)?.with_context(|| format!("no row from: {sql}"))
    }
}

// ---- SQLite ----

fn sqlite_sql(sql: &str) -> String {
    sql.replace(" FOR UPDATE", "")
}

fn sqlite_params(params: &[Value]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|v| match v {
            Value::Null => rusqlite::types::Value::Null,
            Value::Int(i) => rusqlite::types::Value::Integer(*i),
            Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        })
        .collect()
}

fn sqlite_query(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let mut stmt = c.prepare_cached(&sqlite_sql(sql))?;
    let names: Arc<[String]> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(sqlite_params(params)))?;
    let mut out = vec![];
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            values.push(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(n) => Value::Int(n),
                rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                other => bail!("column {}: {:?} values are not kept here", names[i], other.data_type()),
            });
        }
        out.push(Row { names: names.clone(), values });
    }
    Ok(out)
}

fn sqlite_execute(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<u64> {
    let mut stmt = c.prepare_cached(&sqlite_sql(sql))?;
    Ok(stmt.execute(rusqlite::params_from_iter(sqlite_params(params)))? as u64)
}

impl Exec for rusqlite::Connection {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        sqlite_query(self, sql, params)
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        sqlite_execute(self, sql, params)
    }
}

impl Exec for rusqlite::Transaction<'_> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        sqlite_query(self, sql, params)
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        sqlite_execute(self, sql, params)
    }
}

// ---- PostgreSQL ----

/// `?N` placeholders as PostgreSQL's `$N`.
pub fn postgres_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::TEXT | Type::VARCHAR)
    }

    to_sql_checked!();
}

fn postgres_rows(rows: Vec<postgres::Row>) -> Result<Vec<Row>> {
    let Some(first) = rows.first() else { return Ok(vec![]) };
    let names: Arc<[String]> = first.columns().iter().map(|c| c.name().to_string()).collect();
    let types: Vec<Type> = first.columns().iter().map(|c| c.type_().clone()).collect();
    rows.iter()
        .map(|r| {
            let values = types
                .iter()
                .enumerate()
                .map(|(i, ty)| {
                    Ok(match *ty {
                        Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int),
                        Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map_or(Value::Null, |v| Value::Int(v.into())),
                        Type::TEXT | Type::VARCHAR => {
                            r.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Text)
                        }
                        ref other => bail!("column {}: {other} values are not kept here", names[i]),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Row { names: names.clone(), values })
        })
        .collect()
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

thread_local! {
    /// Set while this thread runs a blocking PostgreSQL call off the async workers.
    static OFF_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a blocking PostgreSQL call, off the async worker when on one. The `postgres` crate
/// drives its connection with a runtime of its own, which must never start on an async worker
/// (tokio panics): every call, a rollback on drop and a dropped connection included, runs in
/// here. Nested calls (statements inside a transaction) run directly.
pub fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    if OFF_WORKER.get() {
        return f();
    }
    /// Clears the flag however `f` ends, a panic included.
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            OFF_WORKER.set(false);
        }
    }
    let run = || {
        OFF_WORKER.set(true);
        let _off = Off;
        f()
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
        _ => run(),
    }
}

macro_rules! postgres_exec {
    ($t:ty) => {
        impl Exec for $t {
            fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
                let rows =
                    off_worker(|| postgres::GenericClient::query(self, postgres_sql(sql).as_str(), &pg_params(params)))
                        .with_context(|| format!("PostgreSQL: {}", first_line(sql)))?;
                postgres_rows(rows)
            }

            fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
                off_worker(|| postgres::GenericClient::execute(self, postgres_sql(sql).as_str(), &pg_params(params)))
                    .with_context(|| format!("PostgreSQL: {}", first_line(sql)))
            }
        }
    };
}
postgres_exec!(postgres::Client);
postgres_exec!(postgres::Transaction<'_>);

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or_default()
}

/// The engine behind the job database.
pub enum Engine {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(Box<Postgres>),
}

/// A PostgreSQL connection, and how to open it again.
pub struct Postgres {
    client: Mutex<Option<postgres::Client>>,
    config: postgres::Config,
    pub name: String,
}

impl Drop for Postgres {
    /// Closing the connection runs its runtime, which must not start on an async worker (a
    /// receiver's state may be dropped on one): it closes on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

impl Engine {
    /// Runs `f` on the connection, each statement committed on its own.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Exec) -> Result<T>) -> Result<T> {
        match self {
            Engine::Sqlite(c) => f(&mut *c.lock().unwrap_or_else(|p| p.into_inner())),
            Engine::Postgres(pg) => {
                let mut c = pg.client.lock().unwrap_or_else(|p| p.into_inner());
                f(reconnect_if_closed(&mut c, &pg.config)?)
            }
        }
    }

    /// Runs `f` in one transaction: all its changes or none. SQLite takes the write lock at the
    /// start (`BEGIN IMMEDIATE`); on PostgreSQL, rows a check depends on are read `FOR UPDATE`.
    pub fn transaction<T>(&self, f: impl FnOnce(&mut dyn Exec) -> Result<T>) -> Result<T> {
        match self {
            Engine::Sqlite(c) => {
                let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                let mut tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            }
            Engine::Postgres(pg) => {
                let mut c = pg.client.lock().unwrap_or_else(|p| p.into_inner());
                let c = reconnect_if_closed(&mut c, &pg.config)?;
                // All of it off the worker: a transaction dropped on an error rolls back
                // through the connection's own runtime.
                off_worker(|| {
                    let mut tx = c.transaction()?;
                    let out = f(&mut tx)?;
                    tx.commit()?;
                    Ok(out)
                })
            }
        }
    }
}

/// The connection, opened again first when PostgreSQL closed it (a restart, a failover).
fn reconnect_if_closed<'a>(
    c: &'a mut Option<postgres::Client>,
    config: &postgres::Config,
) -> Result<&'a mut postgres::Client> {
    if c.as_ref().is_none_or(|c| c.is_closed()) {
        log::warn!("the PostgreSQL connection was closed; connecting again");
        // The old connection is dropped off the worker too (closing it runs its runtime).
        off_worker(|| -> Result<()> {
            *c = None;
            *c = Some(config.connect(postgres::NoTls).context("connecting to PostgreSQL again")?);
            Ok(())
        })?;
    }
    Ok(c.as_mut().expect("connected just now"))
}

/// The environment variable naming a file that holds the PostgreSQL password.
pub const ENV_PASSWORD_FILE: &str = "FERRY_DB_PASSWORD_FILE";

/// Connects to PostgreSQL at `url` (no password in it: that comes from `PGPASSWORD` or the
/// file `FERRY_DB_PASSWORD_FILE` names).
pub fn connect_postgres(url: &str) -> Result<Engine> {
    let mut config: postgres::Config = url.parse().with_context(|| "parsing the --db URL".to_string())?;
    if config.get_password().is_some() {
        bail!("the --db URL holds a password: put it in PGPASSWORD or in a file named by {ENV_PASSWORD_FILE} (command lines are visible to every user)");
    }
    if let Some(file) = std::env::var_os(ENV_PASSWORD_FILE) {
        let pw = std::fs::read_to_string(&file).with_context(|| {
            format!("reading the PostgreSQL password from {}", std::path::Path::new(&file).display())
        })?;
        config.password(pw.trim_end_matches(['\n', '\r']));
    } else if let Ok(pw) = std::env::var("PGPASSWORD") {
        config.password(pw);
    }
    config.connect_timeout(std::time::Duration::from_secs(10));
    let name = {
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        format!("PostgreSQL {}@{host}:{port}/{}", config.get_user().unwrap_or("?"), config.get_dbname().unwrap_or("?"))
    };
    let client = off_worker(|| config.connect(postgres::NoTls)).with_context(|| format!("connecting to {name}"))?;
    Ok(Engine::Postgres(Box::new(Postgres { client: Mutex::new(Some(client)), config, name })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_text_for_both_engines() {
        let sql = "SELECT delivery FROM jobs WHERE id = ?1 AND idx = ?12 FOR UPDATE";
        assert_eq!(postgres_sql(sql), "SELECT delivery FROM jobs WHERE id = $1 AND idx = $12 FOR UPDATE");
        assert_eq!(sqlite_sql(sql), "SELECT delivery FROM jobs WHERE id = ?1 AND idx = ?12");
    }

    #[test]
    fn values_round_trip_through_sqlite_and_refuse_the_wrong_kind() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        Exec::execute(&mut c, "CREATE TABLE t (n INTEGER, s TEXT, z TEXT)", &[]).unwrap();
        let huge = u64::MAX;
        Exec::execute(&mut c, "INSERT INTO t VALUES (?1, ?2, ?3)", params![huge, "text", None::<String>]).unwrap();
        let row = Exec::query_one(&mut c, "SELECT n, s, z FROM t", &[]).unwrap();
        // Past i64::MAX is kept as i64::MAX, never wrapped to a negative.
        assert_eq!(row.get::<u64>("n").unwrap(), i64::MAX as u64);
        assert_eq!(row.get::<String>("s").unwrap(), "text");
        assert_eq!(row.get::<Option<String>>("z").unwrap(), None);
        assert!(format!("{:#}", row.get::<u64>("s").unwrap_err()).contains("column s"));
        assert!(format!("{:#}", row.get::<String>("nope").unwrap_err()).contains("not in the row"));
        Exec::execute(&mut c, "UPDATE t SET n = -1", &[]).unwrap();
        let row = Exec::query_one(&mut c, "SELECT n FROM t", &[]).unwrap();
        assert!(row.get::<u64>("n").is_err(), "a negative is no u64");
    }

    #[test]
    fn a_password_in_the_url_is_refused_before_connecting() {
        let e = connect_postgres("postgres://ferry:secret@127.0.0.1:1/ferry").err().expect("refused");
        assert!(format!("{e:#}").contains("holds a password"), "{e:#}");
    }
}
