//! Jobs on disk: one redb file. Every change is a committed (fsynced)
//! transaction, so a job accepted with 202 survives the process being
//! killed the next instant.
//!
//! Records, requests and answers are tables of their own, and indexes
//! name the jobs each reader wants, so no reader decodes what it does not
//! need: a user's page reads that user's records, the start-up scan reads
//! the unfinished ones, the sweep reads the expired ones, and only a run
//! or a job shown whole reads a request or an answer. What each user keeps
//! (jobs and bytes) is counted as jobs come and go, so the caps cost one
//! read a submission.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use redb::{
    Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::record::Job;
use super::Edit;
use crate::config::{JobLimit, JobUsage, JobsConfig};

/// Records by id (JSON).
const RECORDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("job_records");
/// Requests and answers by id, as the routes take and give them.
const REQUESTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("job_requests");
const ANSWERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("job_answers");
/// Jobs by user and submission time, and by submission time alone.
const BY_USER: TableDefinition<'_, (&str, u64, &str), ()> = TableDefinition::new("jobs_by_user");
const BY_TIME: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("jobs_by_time");
/// Jobs that have not ended, and those that have, by when.
const UNFINISHED: TableDefinition<'_, &str, ()> = TableDefinition::new("jobs_unfinished");
const ENDED: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("jobs_ended");
/// What each user keeps (jobs, bytes); the store's total under [`ALL`].
const USAGE: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("job_usage");
const TOTALS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("job_totals");
const ALL: &str = "all";
/// Callbacks still to deliver, by job id: when the next try is due (Unix ms).
const OUTBOX: TableDefinition<'_, &str, u64> = TableDefinition::new("job_callbacks_due");
/// The table of the store's first layout: whole jobs as JSON. Read once,
/// at open, and moved into the tables above.
const LEGACY: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("jobs");

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
    /// The submission would pass one of the store's caps.
    #[error("{}", .0.message())]
    Full(JobLimit),
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self::Io(Box::new(e.into()))
    }
}

/// One page of jobs, newest first.
#[derive(Debug, Default)]
pub struct Page {
    pub jobs: Vec<Job>,
    /// Whether older jobs follow the last.
    pub has_more: bool,
}

/// Which jobs a page lists: one user's (`Some(None)`: those with no user),
/// or everyone's (`None`); older than job `after` when given.
#[derive(Debug, Clone)]
pub struct PageQuery {
    pub user: Option<Option<String>>,
    pub after: Option<String>,
    pub limit: usize,
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
        // The tables exist from the start, so reads never miss them.
        let txn = store.db.begin_write()?;
        Tables::open(&txn)?;
        store.move_legacy(&txn)?;
        txn.commit()?;
        Ok(store)
    }

    /// Moves the jobs of the first layout (whole jobs as JSON) into this
    /// one, so an upgrade loses none.
    fn move_legacy(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        if !txn.list_tables()?.any(|t| t.name() == "jobs") {
            return Ok(());
        }
        let legacy: Vec<(String, Vec<u8>)> = {
            let table = txn.open_table(LEGACY)?;
            let mut all = Vec::new();
            for entry in table.iter()? {
                let (id, value) = entry?;
                all.push((id.value().to_owned(), value.value().to_vec()));
            }
            all
        };
        let mut tables = Tables::open(txn)?;
        for (id, bytes) in &legacy {
            match super::record::legacy(bytes) {
                Some((job, request, answer)) => {
                    tables.insert_new(&job, &request)?;
                    if let Some(answer) = answer {
                        tables.write_answer(&job, &answer)?;
                    }
                }
                None => {
                    tracing::warn!(job = %id, "a job of the store's first layout does not parse; it is dropped")
                }
            }
        }
        drop(tables);
        txn.delete_table(LEGACY)?;
        if !legacy.is_empty() {
            tracing::info!(jobs = legacy.len(), "moved the job store to its new layout");
        }
        Ok(())
    }

    /// Stores a new `job` with its `request`, unless that would pass one of
    /// `limits`' caps.
    pub fn submit(&self, job: &Job, request: &[u8], limits: &JobsConfig) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            let user = tables.usage(job.user_key())?;
            let all = tables.usage_of_all()?;
            if let Some(limit) = limits.limit_passed(user, all, job.bytes()) {
                return Err(StoreError::Full(limit));
            }
            tables.insert_new(job, request)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The record of job `id`, if there is one.
    pub fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let bytes = table.get(id)?.map(|v| v.value().to_vec());
        bytes.map(|b| decode(id, &b)).transpose()
    }

    /// Job `id`'s request.
    pub fn request(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REQUESTS)?;
        let bytes = table.get(id)?.map(|v| Bytes::copy_from_slice(v.value()));
        Ok(bytes)
    }

    /// Job `id`'s answer body, once it has one.
    pub fn answer(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ANSWERS)?;
        let bytes = table.get(id)?.map(|v| Bytes::copy_from_slice(v.value()));
        Ok(bytes)
    }

    /// Reads job `id`, lets `change` alter it, and writes it (with the
    /// answer's body, when it ends the job), all in one write transaction,
    /// so no other change comes in between. Returns the job as stored
    /// after, and whether it was changed.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Job) -> Edit,
    ) -> Result<(Option<Job>, bool), StoreError> {
        let txn = self.db.begin_write()?;
        let result = {
            let mut tables = Tables::open(&txn)?;
            let bytes = tables.records.get(id)?.map(|v| v.value().to_vec());
            match bytes {
                None => (None, false),
                Some(bytes) => {
                    let before = decode(id, &bytes)?;
                    let mut job = before.clone();
                    match change(&mut job) {
                        Edit::Leave => (Some(before), false),
                        Edit::Write => {
                            tables.rewrite(&before, &job)?;
                            (Some(job), true)
                        }
                        Edit::WriteAnswer(answer) => {
                            tables.write_answer(&job, &answer)?;
                            tables.rewrite(&before, &job)?;
                            (Some(job), true)
                        }
                    }
                }
            }
        };
        txn.commit()?;
        Ok(result)
    }

    /// The jobs that have not ended (read from their index, records only).
    pub fn unfinished(&self) -> Result<Vec<Job>, StoreError> {
        let txn = self.db.begin_read()?;
        let (index, records) = (txn.open_table(UNFINISHED)?, txn.open_table(RECORDS)?);
        let mut jobs = Vec::new();
        for entry in index.iter()? {
            let (id, _) = entry?;
            let id = id.value();
            if let Some(bytes) = records.get(id)? {
                jobs.push(decode(id, bytes.value())?);
            }
        }
        jobs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(jobs)
    }

    /// A page of jobs, newest first: records only.
    pub fn page(&self, query: &PageQuery) -> Result<Page, StoreError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        // Where the page starts: below job `after`, else at the newest.
        let after = match &query.after {
            Some(id) => match records.get(id.as_str())? {
                Some(bytes) => Some(decode(id, bytes.value())?),
                None => return Ok(Page::default()),
            },
            None => None,
        };
        let mut ids = Vec::with_capacity(query.limit + 1);
        match &query.user {
            Some(user) => {
                let user = user.as_deref().unwrap_or("");
                let index = txn.open_table(BY_USER)?;
                let end = after.as_ref().map_or((user, u64::MAX, ""), |a| {
                    (user, a.created_ms, a.id.as_str())
                });
                let range = match &after {
                    Some(_) => index.range((user, 0, "")..end)?,
                    None => index.range((user, 0, "")..=end)?,
                };
                for entry in range.rev().take(query.limit + 1) {
                    ids.push(entry?.0.value().2.to_owned());
                }
            }
            None => {
                let index = txn.open_table(BY_TIME)?;
                let range = match &after {
                    Some(a) => index.range(..(a.created_ms, a.id.as_str()))?,
                    None => index.range((0, "")..)?,
                };
                for entry in range.rev().take(query.limit + 1) {
                    ids.push(entry?.0.value().1.to_owned());
                }
            }
        }
        let has_more = ids.len() > query.limit;
        ids.truncate(query.limit);
        let mut jobs = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(bytes) = records.get(id.as_str())? {
                jobs.push(decode(id, bytes.value())?);
            }
        }
        Ok(Page { jobs, has_more })
    }

    /// Forgets the jobs that ended before `before_ms`, reading their
    /// records only. Returns how many.
    pub fn forget_ended_before(&self, before_ms: u64) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut tables = Tables::open(&txn)?;
            let expired: Vec<String> = {
                let mut ids = Vec::new();
                for entry in tables.ended.range(..(before_ms, ""))? {
                    ids.push(entry?.0.value().1.to_owned());
                }
                ids
            };
            for id in expired {
                tables.forget(&id)?;
                removed += 1;
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// Puts job `id`'s callback in the outbox, due at `due_ms`.
    pub fn callback_due(&self, id: &str, due_ms: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(OUTBOX)?.insert(id, due_ms)?;
        txn.commit()?;
        Ok(())
    }

    /// Takes job `id`'s callback out of the outbox.
    pub fn callback_done(&self, id: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(OUTBOX)?.remove(id)?;
        txn.commit()?;
        Ok(())
    }

    /// The callbacks due by `now_ms` (at most `limit`), each made due again
    /// at `retry_at_ms`, so a try cut short by a crash is tried again.
    pub fn take_due_callbacks(
        &self,
        now_ms: u64,
        retry_at_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_write()?;
        let due = {
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut due = Vec::new();
            for entry in outbox.iter()? {
                let (id, at) = entry?;
                if at.value() <= now_ms {
                    due.push(id.value().to_owned());
                    if due.len() == limit {
                        break;
                    }
                }
            }
            for id in &due {
                outbox.insert(id.as_str(), retry_at_ms)?;
            }
            due
        };
        txn.commit()?;
        Ok(due)
    }
}

/// The tables a change of jobs writes, open in one write transaction.
struct Tables<'txn> {
    records: Table<'txn, &'static str, &'static [u8]>,
    requests: Table<'txn, &'static str, &'static [u8]>,
    answers: Table<'txn, &'static str, &'static [u8]>,
    by_user: Table<'txn, (&'static str, u64, &'static str), ()>,
    by_time: Table<'txn, (u64, &'static str), ()>,
    unfinished: Table<'txn, &'static str, ()>,
    ended: Table<'txn, (u64, &'static str), ()>,
    usage: Table<'txn, &'static str, (u64, u64)>,
    totals: Table<'txn, &'static str, (u64, u64)>,
    outbox: Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            records: txn.open_table(RECORDS)?,
            requests: txn.open_table(REQUESTS)?,
            answers: txn.open_table(ANSWERS)?,
            by_user: txn.open_table(BY_USER)?,
            by_time: txn.open_table(BY_TIME)?,
            unfinished: txn.open_table(UNFINISHED)?,
            ended: txn.open_table(ENDED)?,
            usage: txn.open_table(USAGE)?,
            totals: txn.open_table(TOTALS)?,
            outbox: txn.open_table(OUTBOX)?,
        })
    }

    fn usage(&self, user: &str) -> Result<JobUsage, StoreError> {
        Ok(self.usage.get(user)?.map_or(JobUsage::default(), |v| {
            let (jobs, bytes) = v.value();
            JobUsage { jobs, bytes }
        }))
    }

    fn usage_of_all(&self) -> Result<JobUsage, StoreError> {
        Ok(self.totals.get(ALL)?.map_or(JobUsage::default(), |v| {
            let (jobs, bytes) = v.value();
            JobUsage { jobs, bytes }
        }))
    }

    /// Adds `jobs` and `bytes` (either may be negative) to what `user` and
    /// the store keep.
    fn count(&mut self, user: &str, jobs: i64, bytes: i64) -> Result<(), StoreError> {
        let add = |usage: JobUsage| {
            (
                usage.jobs.saturating_add_signed(jobs),
                usage.bytes.saturating_add_signed(bytes),
            )
        };
        let mine = add(self.usage(user)?);
        if mine.0 == 0 {
            self.usage.remove(user)?;
        } else {
            self.usage.insert(user, mine)?;
        }
        let all = add(self.usage_of_all()?);
        self.totals.insert(ALL, all)?;
        Ok(())
    }

    fn insert_new(&mut self, job: &Job, request: &[u8]) -> Result<(), StoreError> {
        let id = job.id.as_str();
        self.records.insert(id, encode(job).as_slice())?;
        self.requests.insert(id, request)?;
        self.by_user
            .insert((job.user_key(), job.created_ms, id), ())?;
        self.by_time.insert((job.created_ms, id), ())?;
        self.index_status(None, job)?;
        self.count(job.user_key(), 1, job.bytes() as i64)
    }

    /// Writes the changed record of a job that was `before`.
    fn rewrite(&mut self, before: &Job, job: &Job) -> Result<(), StoreError> {
        self.records
            .insert(job.id.as_str(), encode(job).as_slice())?;
        self.index_status(Some(before), job)?;
        // A job that ends with a callback to make has it in the outbox in
        // the same transaction: no crash in between can lose it.
        if job.status.is_final() && !before.status.is_final() && job.callback_url.is_some() {
            self.outbox.insert(job.id.as_str(), super::now_ms())?;
        }
        let grown = job.bytes() as i64 - before.bytes() as i64;
        if grown != 0 {
            self.count(job.user_key(), 0, grown)?;
        }
        Ok(())
    }

    fn write_answer(&mut self, job: &Job, answer: &[u8]) -> Result<(), StoreError> {
        self.answers.insert(job.id.as_str(), answer)?;
        Ok(())
    }

    /// Moves the job between the unfinished and the ended index.
    fn index_status(&mut self, before: Option<&Job>, job: &Job) -> Result<(), StoreError> {
        let id = job.id.as_str();
        if let Some(finished) = before.and_then(|b| b.finished_ms.filter(|_| b.status.is_final())) {
            self.ended.remove((finished, id))?;
        }
        match (job.status.is_final(), job.finished_ms) {
            (true, Some(finished)) => {
                self.unfinished.remove(id)?;
                self.ended.insert((finished, id), ())?;
            }
            (true, None) => {
                self.unfinished.remove(id)?;
                self.ended.insert((job.created_ms, id), ())?;
            }
            (false, _) => {
                self.unfinished.insert(id, ())?;
            }
        }
        Ok(())
    }

    /// Removes job `id` and everything that names it.
    fn forget(&mut self, id: &str) -> Result<(), StoreError> {
        let Some(bytes) = self.records.remove(id)?.map(|v| v.value().to_vec()) else {
            return Ok(());
        };
        let job = decode(id, &bytes)?;
        self.requests.remove(id)?;
        self.answers.remove(id)?;
        self.by_user.remove((job.user_key(), job.created_ms, id))?;
        self.by_time.remove((job.created_ms, id))?;
        self.unfinished.remove(id)?;
        self.ended
            .remove((job.finished_ms.unwrap_or(job.created_ms), id))?;
        self.outbox.remove(id)?;
        self.count(job.user_key(), -1, -(job.bytes() as i64))
    }
}

fn encode(job: &Job) -> Vec<u8> {
    serde_json::to_vec(job).expect("a job serializes")
}

/// A stored record: one that does not parse (another version's?) is an
/// error, not dropped.
fn decode(id: &str, bytes: &[u8]) -> Result<Job, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Unreadable(id.to_owned()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of the first layout (whole jobs as JSON in one table) is
    /// moved to this one when it opens: no job is lost to an upgrade.
    #[test]
    fn a_store_of_the_first_layout_is_moved_at_open() {
        let dir = std::env::temp_dir().join(format!("jobs-legacy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = serde_json::json!({
            "id": "job_old", "status": "succeeded", "route": { "type": "chat_completions" },
            "body": { "model": "g", "messages": [] }, "user": "ann", "priority": -10,
            "max_concurrent": null, "runs": 1, "created_ms": 5, "started_ms": 6,
            "finished_ms": 7, "not_before_ms": 0,
            "answer": { "status": 200, "body": { "object": "chat.completion" } },
        });
        {
            let db = Database::create(dir.join("jobs.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(LEGACY)
                .unwrap()
                .insert("job_old", serde_json::to_vec(&old).unwrap().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = JobStore::open(&dir).unwrap();
        let job = store.get("job_old").unwrap().expect("moved");
        assert_eq!(
            (job.user.as_deref(), job.answer_status),
            (Some("ann"), Some(200))
        );
        let request: serde_json::Value =
            serde_json::from_slice(&store.request("job_old").unwrap().unwrap()).unwrap();
        assert_eq!(request, old["body"]);
        let answer: serde_json::Value =
            serde_json::from_slice(&store.answer("job_old").unwrap().unwrap()).unwrap();
        assert_eq!(answer, old["answer"]["body"]);
        let page = store
            .page(&PageQuery {
                user: Some(Some("ann".into())),
                after: None,
                limit: 10,
            })
            .unwrap();
        assert_eq!(page.jobs.len(), 1);
        drop(store);
        // Opened again, nothing is moved twice.
        let store = JobStore::open(&dir).unwrap();
        assert_eq!(store.forget_ended_before(u64::MAX).unwrap(), 1);
        assert!(store.get("job_old").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
