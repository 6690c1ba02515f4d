//! Jobs on disk: one redb file, one table of jobs by id (JSON). Every
//! change is a committed (fsynced) transaction, so a job accepted with 202
//! survives the process being killed the next instant.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::record::Job;

const JOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("jobs");

/// Why the job store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder or the file could not be made or opened.
    #[error("cannot open the job store {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read or a write failed.
    #[error("the job store failed")]
    Io(#[source] Box<redb::Error>),
    /// A call to the Redis server that keeps the jobs failed.
    #[error("the job store on Redis failed")]
    Redis(#[source] Box<::redis::RedisError>),
    /// A stored job does not parse (written by another version?): it is
    /// left as it is, not dropped.
    #[error("job `{0}` is stored in a form this version cannot read")]
    Unreadable(String),
    /// Others kept changing the job while this change was being made.
    #[error("job `{0}` kept changing under this change; try again")]
    Contended(String),
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self::Io(Box::new(e.into()))
    }
}

/// The job store of one gateway.
#[derive(Debug)]
pub struct JobStore {
    db: Database,
}

impl JobStore {
    /// Opens (or makes) `jobs.redb` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("jobs.redb");
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.clone(),
            source,
        };
        private_file(dir, &path).map_err(|e| open_error(Box::new(e)))?;
        let db = Database::create(&path).map_err(|e| open_error(Box::new(e)))?;
        let store = Self { db };
        // The table exists from the start, so reads never miss it.
        let txn = store.db.begin_write()?;
        txn.open_table(JOBS)?;
        txn.commit()?;
        Ok(store)
    }

    /// Writes `job` (new or changed).
    pub fn put(&self, job: &Job) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job).expect("a job serializes");
        let txn = self.db.begin_write()?;
        txn.open_table(JOBS)?
            .insert(job.id.as_str(), bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The job `id`, if there is one.
    pub fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        let bytes = table.get(id)?.map(|v| v.value().to_vec());
        bytes
            .map(|b| decode(&b).ok_or_else(|| StoreError::Unreadable(id.to_owned())))
            .transpose()
    }

    /// Reads job `id`, lets `change` alter it, and writes it, all in one
    /// write transaction (so no other change comes in between); `change`
    /// returns false to leave the job as it is. Returns the job as stored
    /// after, and whether it was changed.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Job) -> bool,
    ) -> Result<(Option<Job>, bool), StoreError> {
        let txn = self.db.begin_write()?;
        let result = {
            let mut table = txn.open_table(JOBS)?;
            let bytes = table.get(id)?.map(|v| v.value().to_vec());
            match bytes {
                None => (None, false),
                Some(bytes) => {
                    let mut job =
                        decode(&bytes).ok_or_else(|| StoreError::Unreadable(id.to_owned()))?;
                    if change(&mut job) {
                        let bytes = serde_json::to_vec(&job).expect("a job serializes");
                        table.insert(id, bytes.as_slice())?;
                        (Some(job), true)
                    } else {
                        (Some(job), false)
                    }
                }
            }
        };
        txn.commit()?;
        Ok(result)
    }

    /// Every job, oldest first.
    pub fn all(&self) -> Result<Vec<Job>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        let mut jobs = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            jobs.extend(decode(value.value()));
        }
        jobs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(jobs)
    }

    /// Removes the jobs that ended before `before_ms`. Returns how many.
    pub fn forget_ended_before(&self, before_ms: u64) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(JOBS)?;
            table.retain(|_, value| {
                let expired = decode(value).is_some_and(|job| {
                    job.status.is_final() && job.finished_ms.is_some_and(|f| f < before_ms)
                });
                removed += usize::from(expired);
                !expired
            })?;
        }
        txn.commit()?;
        Ok(removed)
    }
}

/// A stored job, if it parses.
fn decode(bytes: &[u8]) -> Option<Job> {
    serde_json::from_slice(bytes).ok()
}

/// Makes `path` in `dir` readable by this user alone: jobs hold prompts
/// and answers. A folder it creates is 0700; the file is 0600, also when
/// it was made before (a store once was created world-readable).
fn private_file(dir: &Path, path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}
