//! Where stored keys and teams live.
//!
//! - Embedded: `keys.redb` in the data folder (the jobs' folder by
//!   default), for one instance. The file is opened for each change and
//!   each load, not held, so a gateway that never makes a key never makes
//!   the file, and several gateways on one machine do not lock each other
//!   out of their own folders.
//! - Redis (`[state] backend = "redis"`): two hashes of JSON records and a
//!   version number that every change raises in the same transaction;
//!   every instance polls the version and reloads when it moves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::record::{KeyRecord, TeamRecord};
use crate::state::redis::LazyConnection;

const KEYS: TableDefinition<'_, &str, &str> = TableDefinition::new("keys");
const TEAMS: TableDefinition<'_, &str, &str> = TableDefinition::new("teams");

/// Every stored key and team.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    pub keys: Vec<KeyRecord>,
    pub teams: Vec<TeamRecord>,
    /// The store's version when read (Redis; 0 embedded).
    pub version: u64,
}

/// Why the store could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// No folder to keep the embedded store in.
    #[error("no folder for the key store: set [key_store] data_dir (or HOME)")]
    NoFolder,
    #[error("the key store `{path}` could not be used")]
    File {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("the key store in Redis could not be used")]
    Redis(#[source] redis::RedisError),
    #[error("a stored record does not parse")]
    Record(#[source] serde_json::Error),
}

/// A store of keys and teams.
pub enum KeyStore {
    /// `keys.redb` in this folder (`None`: there is none to use).
    Embedded(Option<PathBuf>),
    /// Redis, under a key prefix.
    Redis {
        conn: Arc<LazyConnection>,
        prefix: String,
    },
}

/// One change.
enum Change<'a> {
    PutKey(&'a KeyRecord),
    DeleteKey(&'a str),
    PutTeam(&'a TeamRecord),
    DeleteTeam(&'a str),
}

impl KeyStore {
    /// Whether other instances may change the store (so it must be polled).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Redis { .. })
    }

    /// Everything stored.
    pub async fn load(&self) -> Result<Stored, KeyStoreError> {
        match self {
            Self::Embedded(None) => Ok(Stored::default()),
            Self::Embedded(Some(dir)) => {
                let path = dir.join("keys.redb");
                if !path.exists() {
                    return Ok(Stored::default());
                }
                blocking(move || load_file(&path)).await
            }
            Self::Redis { conn, prefix } => {
                let (version, keys, teams): (Option<u64>, Vec<String>, Vec<String>) = conn
                    .run(async |c| {
                        redis::pipe()
                            .atomic()
                            .get(version_key(prefix))
                            .hvals(format!("{prefix}:keys"))
                            .hvals(format!("{prefix}:teams"))
                            .query_async(c)
                            .await
                    })
                    .await
                    .map_err(KeyStoreError::Redis)?;
                Ok(Stored {
                    keys: parse_all(&keys)?,
                    teams: parse_all(&teams)?,
                    version: version.unwrap_or(0),
                })
            }
        }
    }

    /// The store's version now (Redis only; embedded: 0).
    pub async fn version(&self) -> Result<u64, KeyStoreError> {
        match self {
            Self::Embedded(_) => Ok(0),
            Self::Redis { conn, prefix } => conn
                .run(async |c| {
                    redis::cmd("GET")
                        .arg(version_key(prefix))
                        .query_async::<Option<u64>>(c)
                        .await
                })
                .await
                .map(Option::unwrap_or_default)
                .map_err(KeyStoreError::Redis),
        }
    }

    pub async fn put_key(&self, key: &KeyRecord) -> Result<(), KeyStoreError> {
        self.change(Change::PutKey(key)).await
    }

    pub async fn delete_key(&self, id: &str) -> Result<(), KeyStoreError> {
        self.change(Change::DeleteKey(id)).await
    }

    pub async fn put_team(&self, team: &TeamRecord) -> Result<(), KeyStoreError> {
        self.change(Change::PutTeam(team)).await
    }

    pub async fn delete_team(&self, name: &str) -> Result<(), KeyStoreError> {
        self.change(Change::DeleteTeam(name)).await
    }

    async fn change(&self, change: Change<'_>) -> Result<(), KeyStoreError> {
        let (table, id, json) = match change {
            Change::PutKey(k) => ("keys", k.id.clone(), Some(to_json(k))),
            Change::DeleteKey(id) => ("keys", id.to_owned(), None),
            Change::PutTeam(t) => ("teams", t.name.clone(), Some(to_json(t))),
            Change::DeleteTeam(name) => ("teams", name.to_owned(), None),
        };
        match self {
            Self::Embedded(None) => Err(KeyStoreError::NoFolder),
            Self::Embedded(Some(dir)) => {
                let dir = dir.clone();
                blocking(move || change_file(&dir, table, &id, json.as_deref())).await
            }
            Self::Redis { conn, prefix } => {
                let hash = format!("{prefix}:{table}");
                conn.run(async |c| {
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    match &json {
                        Some(json) => pipe.hset(&hash, &id, json).ignore(),
                        None => pipe.hdel(&hash, &id).ignore(),
                    };
                    pipe.incr(version_key(prefix), 1)
                        .ignore()
                        .query_async::<()>(c)
                        .await
                })
                .await
                .map_err(KeyStoreError::Redis)
            }
        }
    }
}

fn version_key(prefix: &str) -> String {
    format!("{prefix}:keys:version")
}

fn to_json(record: &impl serde::Serialize) -> String {
    serde_json::to_string(record).expect("records serialize")
}

fn parse_all<T: serde::de::DeserializeOwned>(texts: &[String]) -> Result<Vec<T>, KeyStoreError> {
    texts
        .iter()
        .map(|t| serde_json::from_str(t).map_err(KeyStoreError::Record))
        .collect()
}

/// Runs file work off the async threads.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, KeyStoreError> + Send + 'static,
) -> Result<R, KeyStoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Opens the file, waiting a little while another process has it open.
fn open(path: &std::path::Path) -> Result<Database, KeyStoreError> {
    let file_error = |e: redb::Error| KeyStoreError::File {
        path: path.to_owned(),
        source: Box::new(e),
    };
    for _ in 0..40 {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => return Err(file_error(e.into())),
        }
    }
    Err(file_error(redb::DatabaseError::DatabaseAlreadyOpen.into()))
}

fn load_file(path: &std::path::Path) -> Result<Stored, KeyStoreError> {
    let file_error = |e: redb::Error| KeyStoreError::File {
        path: path.to_owned(),
        source: Box::new(e),
    };
    let db = open(path)?;
    let read = db.begin_read().map_err(|e| file_error(e.into()))?;
    let texts = |definition: TableDefinition<'_, &str, &str>| -> Result<Vec<String>, redb::Error> {
        let table = match read.open_table(definition) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut texts = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            texts.push(value.value().to_owned());
        }
        Ok(texts)
    };
    Ok(Stored {
        keys: parse_all(&texts(KEYS).map_err(file_error)?)?,
        teams: parse_all(&texts(TEAMS).map_err(file_error)?)?,
        version: 0,
    })
}

fn change_file(
    dir: &std::path::Path,
    table: &str,
    id: &str,
    json: Option<&str>,
) -> Result<(), KeyStoreError> {
    let path = dir.join("keys.redb");
    let file_error = |e: redb::Error| KeyStoreError::File {
        path: path.clone(),
        source: Box::new(e),
    };
    std::fs::create_dir_all(dir).map_err(|e| file_error(e.into()))?;
    let db = open(&path)?;
    let write = db.begin_write().map_err(|e| file_error(e.into()))?;
    {
        let definition = if table == "keys" { KEYS } else { TEAMS };
        let mut table = write
            .open_table(definition)
            .map_err(|e| file_error(e.into()))?;
        match json {
            Some(json) => table.insert(id, json).map(drop),
            None => table.remove(id).map(drop),
        }
        .map_err(|e| file_error(e.into()))?;
    }
    write.commit().map_err(|e| file_error(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::record::Limits;

    #[tokio::test]
    async fn the_embedded_store_keeps_keys_and_teams_across_opens() {
        let dir = std::env::temp_dir().join(format!("sy-keys-{}", uuid::Uuid::new_v4()));
        let store = KeyStore::Embedded(Some(dir.clone()));
        assert_eq!(store.load().await.unwrap(), Stored::default());
        let team = TeamRecord {
            name: "search".into(),
            limits: Limits {
                daily_usd: Some(5.0),
                ..Limits::default()
            },
            created_at_ms: 1,
        };
        store.put_team(&team).await.unwrap();
        let mut key = KeyRecord {
            id: "key_1".into(),
            digest: String::new(),
            prefix: String::new(),
            team: "search".into(),
            user: Some("alice".into()),
            name: None,
            model_groups: vec![],
            priority: 0,
            limits: Limits::default(),
            disabled: false,
            created_at_ms: 2,
            expires_at_ms: None,
        };
        key.set_secret("sk-sy-secret");
        store.put_key(&key).await.unwrap();
        let again = KeyStore::Embedded(Some(dir.clone())).load().await.unwrap();
        assert_eq!((again.keys, again.teams), (vec![key], vec![team]));
        store.delete_key("key_1").await.unwrap();
        assert!(store.load().await.unwrap().keys.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
